#!/usr/bin/env bash
# Issue 19's image study: the Fashion-MNIST ResNet study again, trained to convergence (10 epochs,
# ~4,300 SGD steps of 128 images, the soft-diamond paper's recipe: Nesterov momentum 0.9, triangular
# learning rate peaking at 0.1; validation accuracy logged every epoch to show the plateau).
# CPU, 2 cores: ~8 min per run alone, ~11 min with two runs at a time (one thread each).
#
#   1. tune every arm on the validation split (seed 1; the test split is never read):
#      configs/tune_image.json (34 grid points: none, L2, L1, SaS alpha 0.5/1.0/1.5 over gamma x
#      strength, pWD p 0.8/1.0/1.5, stable rank vs weighted alpha); ranked by validation accuracy
#   2. each arm's best grid point on the test split, seeds 1-3
#   3. each arm's sparsest grid point within 1 point of 'none' on the test split, seeds 1-3
# After each stage `report` rewrites $RECORD/report.md (every arm as mean [95% CI] over seeds, the
# claims of configs/claims_image_converged.json with their verdicts) and the figures $RECORD/frontier_<stage>.png.
#
# Resumable and committed as it goes, like scripts/study_translation_finetune.sh: weights in $OUT
# (ignored), each run's all_results.json / run_config.json and each stage's tables in $RECORD.
# BASE, OUT and RECORD move the whole study (BASE=my_vit.json OUT=runs/vit RECORD=docs/studies/vit ...).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-configs/study_image_converged.json}  # e.g. a ViT config ("model_type": "vit") on a GPU machine
OUT=${OUT:-runs/study_image_converged}
RECORD=${RECORD:-docs/studies/image_converged}
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
compare() { "$PY" scripts/compare_regularizers.py --task image --jobs "${JOBS:-2}" \
    --base_config "$BASE" "$@"; }
report() { "$PY" -m hf_soft_diamond.tasks.cli report "$RECORD" --claims configs/claims_image_converged.json; }

compare --arms configs/tune_image.json --split validation --seeds 1 --output_dir "$OUT/tune" --record_dir "$RECORD/tune"
report
compare --arms "$RECORD/tune/best_arms.json" --seeds 1 2 3 --output_dir "$OUT/final" --record_dir "$RECORD/final"
report
compare --arms "$RECORD/tune/sparsest_arms.json" --seeds 1 2 3 --output_dir "$OUT/sparse" --record_dir "$RECORD/sparse"
report
