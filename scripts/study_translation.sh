#!/usr/bin/env bash
# The Ding German->English translation study of docs/results.md, end to end
# (CPU, 2 cores: about 1.5 hours with two runs at a time, one thread each).
#
#   1. tune every arm on the validation split (seed 1; the test split is never read):
#      L2 (AdamW decay) and L1 over two strengths, SaS alpha in {0.5, 1.0, 1.5} over
#      gamma x strength, pWD p in {0.8, 1.0, 1.5} over two strengths, stable rank vs
#      weighted alpha (configs/tune_translation.json)
#      Grid points are ranked by validation cross-entropy (--metric loss): at this budget the
#      untuned baseline's BLEU is ~0.4, where BLEU differences between settings are noise.
#   2. each arm's best grid point on the test split, seeds 1-3 (table headed by test BLEU)
# Model: the 'micro' Marian (2+2 layers, d_model 128, 2k BPE), 500 AdamW steps of 64
# sentences (configs/study_translation_micro.json); every arm has the same model and budget.
# Finished runs are reused: the script can be stopped and started again.
# JOBS runs at a time (default 2), each with THREADS torch threads (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study_translation}
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
compare() { "$PY" scripts/compare_regularizers.py --task translation --jobs "${JOBS:-2}" "$@"; }

compare --base_config configs/study_translation_micro.json --arms configs/tune_translation.json \
    --split validation --metric loss --seeds 1 --output_dir "$OUT/tune"
compare --base_config configs/study_translation_micro.json --arms "$OUT/tune/best_arms.json" \
    --seeds 1 2 3 --output_dir "$OUT/final"
