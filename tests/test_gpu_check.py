"""The GPU check (issue 20) runs end to end on the CPU, so that it cannot rot without a GPU.

``benchmarks/gpu_check.sh`` with ``GPU_CHECK_DEVICE=cpu`` and the benchmark's ``--tiny`` smoke
mode: the version header, ``pytest -m cuda`` on ``tests/test_cuda.py`` (everything skipped
here), every Trainer arm and optimizer setting of ``benchmarks/bench_gpu_throughput.py`` on a
1+1-layer Marian, and the JSON it writes. What it proves: the scripts run and report; the
figures themselves mean nothing on this model and device. Not marked ``cuda``: it lives
apart from ``tests/test_cuda.py``, whose module-level marks skip everything without a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gpu_throughput as bench  # noqa: E402


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_BENCH_ARGS": "--tiny", "PYTHON": sys.executable,
           "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "HF_SOFT_DIAMOND_CUDA_TESTS_ON_CPU": "0",
           # the phase timeouts keep a GPU run within its 8 minutes; here they would only turn a busy CPU into a failure
           "GPU_CHECK_TEST_TIMEOUT": "1500", "GPU_CHECK_BENCH_TIMEOUT": "1500"}
    env.pop("GPU_CHECK_JSON", None)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "== CUDA tests: exit status 0" in out and "skipped" in out
    assert "GOAL elementwise prior within 3% of plain Trainer: sas decoupled a=0.5" in out
    assert "GOAL spectral prior within 10% of plain Trainer: stable_rank" in out

    report = json.loads((tmp_path / "gpu_check.json").read_text())  # $OUT/gpu_check.json
    assert report["complete"] is True and report["pytest_rc"] == 0
    assert report["environment"]["torch"] and report["settings"]["device"] == "cpu" and report["settings"]["tiny"]
    assert [a["arm"] for a in report["trainer"]] == [label for label, _, _ in bench.TRAINER_ARMS]
    for arm in report["trainer"]:
        assert arm["steps_per_s"] > 0 and arm["tokens_per_s"] == pytest.approx(
            arm["steps_per_s"] * report["model"]["tokens_per_step"])
        assert len(arm["window_steps_per_s"]) == report["settings"]["repeats"]
        if arm["kind"] != "plain":
            assert arm["trainer"] == "SoftDiamondSeq2SeqTrainer" and arm["regularizer_steps"] == arm["steps"]
    fused = next(a for a in report["trainer"] if "RegularizedAdamW" in a["arm"])
    assert fused["optimizer"] == "RegularizedAdamW"
    assert {g["arm"] for g in report["goals"]} == {a["arm"] for a in report["trainer"] if a["kind"] != "plain"}
    assert [r["setting"] for r in report["optimizer_step"]] == [s[0] for s in bench.OPTIMIZER_SETTINGS]
    assert all(r["step_ms"] > 0 for r in report["optimizer_step"])
    assert (tmp_path / "gpu_check_pytest.xml").is_file()


def test_default_output_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GPU_CHECK_JSON", raising=False)
    monkeypatch.delenv("OUT", raising=False)
    assert bench.default_out() == REPO / "benchmarks" / "gpu_check.json"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.default_out() == tmp_path / "gpu_check.json"
    monkeypatch.setenv("GPU_CHECK_JSON", str(tmp_path / "x.json"))
    assert bench.default_out() == tmp_path / "x.json"


def test_without_a_gpu_the_benchmark_says_so(capsys):
    if bench.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
