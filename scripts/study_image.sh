#!/usr/bin/env bash
# The Fashion-MNIST image study of docs/results.md, end to end (CPU, 2 cores: about 3 hours).
#
#   1. tune every arm on the validation split (seed 1; the test split is never read)
#   2. the tuned arms on the test split, seeds 1-3 (small ResNet)
#   3. interaction runs: all ten tuned arms with dropout 0.1, without batch norm, without
#      augmentation (seeds 1-2)
#   4. all ten tuned arms on the small ViT, 300 steps (seeds 1-3; hyperparameters tuned on the
#      ResNet; a ViT step costs ~0.7 s here, ~14x the ResNet's; two runs at a time)
#   5. the sparse picks of step 1 (sparsest within 1 point of 'none') on the test split, seeds 1-3
# Finished runs are reused: the script can be stopped and started again.
# configs/study_image_tuned_arms.json is a copy of step 1's best_arms.json (2026-11-23): steps 2-4
# can be rerun from it without tuning again (docs/results.md shows the commands).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study_image}
PY=${PYTHON:-python3}
compare() { "$PY" scripts/compare_regularizers.py --task image "$@"; }

compare --base_config configs/study_image_resnet.json --arms configs/tune_image.json --split validation \
    --seeds 1 --output_dir "$OUT/tune_resnet"
compare --base_config configs/study_image_resnet.json --arms "$OUT/tune_resnet/best_arms.json" \
    --seeds 1 2 3 --output_dir "$OUT/resnet"

# interaction variants: the base config with one switch changed; every tuned arm runs in each
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
base = json.loads(Path("configs/study_image_resnet.json").read_text())
variants = {"dropout": {"dropout": 0.1}, "no_batch_norm": {"batch_norm": False},
            "no_augmentation": {"hflip": False, "crop_padding": 0}}
for name, change in variants.items():
    (out / f"base_{name}.json").write_text(json.dumps({**base, **change}, indent=2))
PY
for variant in dropout no_batch_norm no_augmentation; do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 compare --base_config "$OUT/base_$variant.json" \
      --arms "$OUT/tune_resnet/best_arms.json" --seeds 1 2 --jobs 2 --output_dir "$OUT/resnet_$variant"
done

OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 compare --base_config configs/study_image_vit.json \
    --arms "$OUT/tune_resnet/best_arms.json" --seeds 1 2 3 --jobs 2 --output_dir "$OUT/vit"

# 5. the sparse picks: per arm, the sparsest grid point (|w| <= 1e-3) within 1 point of
#    'none' on validation (sparsest_arms.json), where it differs from the most accurate one;
#    L2 and the spectral arm are left out (their sparsest points are not sparse: <= 3%)
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
tune = Path(sys.argv[1]) / "tune_resnet"
best = json.loads((tune / "best_arms.json").read_text())
sparse = json.loads((tune / "sparsest_arms.json").read_text())
arms = {f"{k}_sparse": v for k, v in sparse.items() if v != best.get(k) and k not in ("l2", "spectral")}
(tune / "sparse_final_arms.json").write_text(json.dumps(arms, indent=2))
PY
compare --base_config configs/study_image_resnet.json --arms "$OUT/tune_resnet/sparse_final_arms.json" \
    --seeds 1 2 3 --output_dir "$OUT/resnet_sparse"
