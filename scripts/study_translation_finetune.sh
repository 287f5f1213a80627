#!/usr/bin/env bash
# Issue 19's translation study: sparsify the shipped German->English translator by fine-tuning it
# with each regularizer (CPU, 2 cores, two runs at a time with one thread each: ~10-14 min per run,
# ~9-10 min of training and 1-1.5 min of decoding; ~3 h for the tuning stage's 36 grid points,
# ~2.5 h for the final stage, ~1 h for the sparse stage).
#
#   1. tune every arm on the validation split (seed 1; the test split is never read):
#      none, L2 (AdamW's decoupled decay), L1 (proximal), SaS alpha in {0.5, 1.0, 1.5} decoupled
#      AND coupled (the coupled form under Adam is measured, not assumed), pWD p in {0.8, 1.0, 1.5},
#      stable rank vs weighted alpha (configs/tune_translation_finetune.json); ranked by BLEU
#   2. each arm's best grid point on the test split, seeds 1-3
#   3. each arm's sparsest grid point within 1 BLEU of 'none' on the test split, seeds 1-3
# Every run starts from models/marian-de-en-base with the same data order (seeded), one epoch of
# ding+libreoffice (492 AdamW steps of 2,048 tokens, lr 2e-4 linear decay), greedy decoding, the
# prior on the attention/feed-forward matrices (configs/study_translation_finetune.json).
#
# After each stage `report` rewrites $RECORD/report.md (every arm as mean [95% CI] over seeds, the
# claims of configs/claims_translation_finetune.json with their verdicts) and the figures $RECORD/frontier_<stage>.png.
#
# Resumable and committed as it goes: run folders (weights) go to $OUT (ignored by git); each
# finished run's all_results.json and run_config.json, and each stage's tables, are also written
# to $RECORD (docs/studies/translation_finetune, tracked). A run found in either is not run again,
# so `git pull && bash scripts/study_translation_finetune.sh` continues where any machine stopped.
# A run that would train the very model another recorded run trained (stage 2's seed 1 is stage
# 1's run of the picked grid point; an arm whose sparsest point is its best is the same run in
# stages 2 and 3) evaluates that run's saved weights in $OUT instead (hf_soft_diamond/tasks/run/
# reuse.py) and names it in its results (`trained_in`); on a machine without them it trains.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study_translation_finetune}
RECORD=${RECORD:-docs/studies/translation_finetune}
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
compare() { "$PY" scripts/compare_regularizers.py --task translation --jobs "${JOBS:-2}" \
    --base_config configs/study_translation_finetune.json "$@"; }
report() { "$PY" -m hf_soft_diamond.tasks.cli report "$RECORD" --claims configs/claims_translation_finetune.json; }

compare --arms configs/tune_translation_finetune.json --split validation --seeds 1 \
    --output_dir "$OUT/tune" --record_dir "$RECORD/tune"
report
compare --arms "$RECORD/tune/best_arms.json" --seeds 1 2 3 --output_dir "$OUT/final" --record_dir "$RECORD/final"
report
compare --arms "$RECORD/tune/sparsest_arms.json" --seeds 1 2 3 --output_dir "$OUT/sparse" --record_dir "$RECORD/sparse"
report
