"""What the non-finite weight guard costs per optimizer step (issue 17: "on in every run at
negligible cost").

On the Marian-like model of the other step benchmarks (its regularized matrices, each with
a gradient), side by side in one run, medians of ``--repeats``:

* ``adamw``: ``torch.optim.AdamW.step()`` alone (foreach);
* ``adamw + guard``: the same step, then :func:`hf_soft_diamond.hooks.check_finite_weights`
  over the regularized weights, as every run does after each step (``reg_check_finite_every=1``),
  in the eager and the compiled backend.

The ratio ``guard / adamw`` is the guard's share of a bare optimizer step; a training step
(forward + backward) is many times longer.

Usage::

    python benchmarks/bench_finite_guard.py [--vocab 8000] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch

from hf_soft_diamond.hooks import check_finite_weights
from hf_soft_diamond.regularizers.selection import select_parameters

from _common import marian_like, median_time  # noqa: E402 - benchmarks/ is on sys.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = marian_like(args.vocab)
    named = select_parameters(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
    n = sum(p.numel() for _, p in named)
    print(f"Marian-like model (vocab {args.vocab}): {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"guard over {n:,} regularized weights in {len(named)} tensors; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    step = median_time(optimizer.step, args.repeats, warmup=3)
    print(f"  adamw step                 {1e3 * step:8.2f} ms")
    for backend in ("eager", "compile"):
        guard = median_time(lambda b=backend: check_finite_weights(named, None, "raise", backend=b), args.repeats,
                            warmup=3)
        print(f"  guard ({backend:7s})            {1e3 * guard:8.2f} ms   = {guard / step:.3f}x of the AdamW step")


if __name__ == "__main__":
    main()
