"""When does compiling a regularizer's per-step kernel pay back? (the ``auto`` backend's threshold)

For each prior and each size ``n`` (weights in one parameter group, split over four tensors),
side by side in one run:

* ``eager``: median time of one decoupled step (``decoupled_pre_step_`` + ``decoupled_post_step_``);
* ``compiled``: the same, compiled by inductor, after its first call;
* ``compile``: the first compiled call (cold inductor cache: a fresh cache directory per size);
* ``break-even``: compile time / (eager - compiled), in optimizer steps.

The ``auto`` backend compiles a call over at least ``COMPILE_MIN_NUMEL`` weights
(:mod:`hf_soft_diamond.fused`); the threshold is where the break-even falls to a few
thousand steps (a short fine-tuning run), so tiny models and the README's toy loop run
eagerly and start at once.

Usage::

    python benchmarks/bench_compile_breakeven.py [--sizes 1e3 1e4 1e5 1e6 4e6] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from hf_soft_diamond import build_regularizer

from _common import median_time  # noqa: E402 - benchmarks/ is on sys.path

PRIORS = [
    ("sas a=0.5 decoupled", "sas", {"alpha": 0.5, "gamma": 0.1}),
    ("pwd p=0.8", "pwd", {"p": 0.8}),
    ("l1 prox", "l1", {}),
]


def _step(reg, params, lr=1e-3):
    reg.decoupled_pre_step_(params, lr)
    reg.decoupled_post_step_(params, lr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6, 4e6])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'prior':22s} {'weights':>9s} {'eager ms':>9s} {'compiled ms':>12s} {'compile s':>10s} "
          f"{'break-even steps':>17s}")
    for label, name, hp in PRIORS:
        for size in args.sizes:
            n = int(size)
            torch.manual_seed(0)
            params = [torch.randn(max(n // 4, 1)) * 0.05 for _ in range(4)]
            eager = build_regularizer(name, strength=1e-2, mode="decoupled", fused_backend="eager", **hp)
            t_eager = median_time(lambda: _step(eager, params), args.repeats)
            with tempfile.TemporaryDirectory() as cache:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
                torch._dynamo.reset()
                compiled = build_regularizer(name, strength=1e-2, mode="decoupled", fused_backend="compile", **hp)
                t0 = time.perf_counter()
                _step(compiled, params)
                t_compile = time.perf_counter() - t0
                t_compiled = median_time(lambda: _step(compiled, params), args.repeats)
            saving = t_eager - t_compiled
            breakeven = f"{t_compile / saving:,.0f}" if saving > 0 else "never"
            print(f"{label:22s} {n:9,d} {1e3 * t_eager:9.3f} {1e3 * t_compiled:12.3f} {t_compile:10.1f} "
                  f"{breakeven:>17s}", flush=True)


if __name__ == "__main__":
    main()
