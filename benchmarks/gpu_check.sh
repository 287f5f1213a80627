#!/usr/bin/env bash
# The GPU check of issue 20, in one command on a machine with a CUDA GPU (<= 8 minutes):
#
#   bash benchmarks/gpu_check.sh
#
# 1. prints the versions (python, torch and its CUDA, transformers, triton) and the GPU;
# 2. runs the CUDA tests: pytest -m cuda -q tests/test_cuda.py (device vs CPU / float64
#    references; at most GPU_CHECK_TEST_TIMEOUT s, default 240);
# 3. measures throughput: benchmarks/bench_gpu_throughput.py (the Trainer with each prior vs the
#    plain Seq2SeqTrainer on the IWSLT-size Marian in bf16, and RegularizedAdamW vs torch's fused
#    AdamW; at most GPU_CHECK_BENCH_TIMEOUT s, default 200), printing the table and the goal lines
#    and writing the JSON to $GPU_CHECK_JSON, else $OUT/gpu_check.json when $OUT is set, else
#    benchmarks/gpu_check.json (the pytest log and JUnit XML go next to it).
#
# Installs nothing: run it from a checkout where `pip install -e .[dev]` and a CUDA build of torch
# are present (any directory: it changes to the repository root). Exit status: 0 when the tests
# passed and the benchmark completed, 1 otherwise, 2 without a usable device.
#
# Settings (environment): PYTHON (default python3); GPU_CHECK_DEVICE (cuda; `cpu` with
# GPU_CHECK_BENCH_ARGS=--tiny is the CPU smoke run of tests/test_gpu_check.py, where the CUDA
# tests are skipped); GPU_CHECK_BENCH_ARGS (extra arguments of the benchmark, e.g. "--repeats 5").
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # nothing is downloaded: models are built from configs
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-200}
if [[ -n "${GPU_CHECK_JSON:-}" ]]; then
    JSON=$GPU_CHECK_JSON
elif [[ -n "${OUT:-}" ]]; then
    JSON=$OUT/gpu_check.json
else
    JSON=benchmarks/gpu_check.json
fi
mkdir -p "$(dirname "$JSON")"
LOG_DIR=$(dirname "$JSON")
start=$(date +%s)

echo "== gpu_check (issue 20): $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE, json $JSON"
"$PY" - "$DEVICE" <<'EOF'
import platform, sys
import torch, transformers
device = sys.argv[1]
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.cuda.is_available() else None}), "
      f"transformers {transformers.__version__}, triton {triton_version}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
elif device.startswith("cuda"):
    print("no CUDA device: torch.cuda.is_available() is False", file=sys.stderr)
    sys.exit(2)
EOF
rc=$?
if [[ $rc -ne 0 ]]; then
    exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv,noheader || true
fi

echo "== CUDA tests: pytest -m cuda -q tests/test_cuda.py (timeout ${TEST_TIMEOUT}s)"
timeout --kill-after=10 "$TEST_TIMEOUT" "$PY" -m pytest -m cuda -q -rs --durations=10 tests/test_cuda.py \
    -p no:cacheprovider --junitxml="$LOG_DIR/gpu_check_pytest.xml" 2>&1 | tee "$LOG_DIR/gpu_check_pytest.log"
test_rc=${PIPESTATUS[0]}
echo "== CUDA tests: exit status $test_rc$([[ $test_rc -eq 124 ]] && echo ' (timed out)') after $(( $(date +%s) - start ))s"

echo "== throughput: benchmarks/bench_gpu_throughput.py (timeout ${BENCH_TIMEOUT}s)"
# shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of arguments
timeout --kill-after=10 "$BENCH_TIMEOUT" "$PY" benchmarks/bench_gpu_throughput.py --device "$DEVICE" --out "$JSON" \
    --pytest-rc "$test_rc" ${GPU_CHECK_BENCH_ARGS:-}
bench_rc=$?
echo "== throughput: exit status $bench_rc$([[ $bench_rc -eq 124 ]] && echo ' (timed out; the JSON holds what was measured)')"

echo "== gpu_check done in $(( $(date +%s) - start ))s: tests $test_rc, benchmark $bench_rc; $JSON"
if [[ $test_rc -ne 0 || $bench_rc -ne 0 ]]; then
    exit 1
fi
exit 0
