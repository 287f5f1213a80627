"""SaS hot path on CPU: the per-step score kernels vs AdamW's decay pass (inductor).

Side by side in one run over N float32 weights (default 35M, the benchmark model's
regularized weights), each compiled with ``torch.compile(dynamic=False)``, timed as the
median of interleaved repeats:

* ``w.mul_(f)``: AdamW's decoupled weight decay (the reference, 2 streams);
* ``g.add_(w*c)``: a coupled L2 gradient (3 streams, memory floor of the coupled kernels);
* SaS coupled ``g += coef*sign(w)*psi_1(|w|/c)`` and decoupled ``w += coef*psi_1(|w|/c)``
  with ``score_path="fast"`` (rational reader) and ``"table"`` (log + gather + cubic), each
  as the regularizer's kernels run them now (``SasTable.score_signed``: odd extension, no
  sign pass, compiled with ``fused.COMPILE_OPTIONS``, i.e. FMA contraction) and, for the
  fast reader, as before (``abs``/``sign`` passes, inductor's default ``ffp-contract=off``).

Usage::

    PYTHONPATH=. python benchmarks/bench_sas_hot_path.py [--n 35000000] [--repeats 15] [--alphas 1.5 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_soft_diamond.fused import COMPILE_OPTIONS
from hf_soft_diamond.priors.sas import get_sas_table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=35_000_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.5, 0.5])
    args = ap.parse_args()
    torch.manual_seed(0)
    w = torch.randn(args.n) * 0.05
    g = torch.randn(args.n) * 1e-3
    inv_c, coef = 1.0 / 0.5 ** (1 / 1.5), 1e-4

    def mul_(w):
        w.mul_(0.9999)

    def l2_coupled(w, g):
        g.add_(w * 1e-4)

    kernels = {"w.mul_(f) [AdamW decay]": (torch.compile(mul_, dynamic=False), (w,)),
               "g.add_(w*c) [coupled L2]": (torch.compile(l2_coupled, dynamic=False), (w, g))}
    for alpha in args.alphas:
        table = get_sas_table(alpha)
        _ = table.fast
        def coupled_before(w, g, score=table.score_unit_fast):
            g.add_(w.sign() * score(w.abs() * inv_c) * -coef)

        def decoupled_before(w, score=table.score_unit_fast):
            w.add_(score(w.abs() * inv_c) * coef)

        kernels[f"sas a={alpha} coupled fast, before"] = (torch.compile(coupled_before, dynamic=False), (w, g))
        kernels[f"sas a={alpha} decoupled fast, before"] = (torch.compile(decoupled_before, dynamic=False), (w,))
        for path in ("fast", "table"):
            def coupled(w, g, fast=path == "fast"):
                g.add_(table.score_signed(w, inv_c, fast=fast, out_scale=-coef))

            def decoupled(w, fast=path == "fast"):
                w.add_(table.score_signed(w, inv_c, fast=fast, out_scale=coef))

            kernels[f"sas a={alpha} coupled {path}"] = (
                torch.compile(coupled, dynamic=False, options=COMPILE_OPTIONS), (w, g))
            kernels[f"sas a={alpha} decoupled {path}"] = (
                torch.compile(decoupled, dynamic=False, options=COMPILE_OPTIONS), (w,))
        print(f"alpha={alpha}: fast degree {table.fast_degree}, max rel err {table.fast_max_rel_error:.2e}")
    w0 = w.clone()
    for fn, a in kernels.values():  # compile + warm up
        fn(*a)
        fn(*a)
    samples = {k: [] for k in kernels}
    for _ in range(args.repeats):
        for k, (fn, a) in kernels.items():
            w.copy_(w0)
            t0 = time.perf_counter()
            fn(*a)
            samples[k].append(time.perf_counter() - t0)
    ref = statistics.median(samples["w.mul_(f) [AdamW decay]"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n = {args.n / 1e6:.1f}M float32")
    print(f"{'kernel':38s} {'median ms':>10s} {'ns/elem':>8s} {'x mul_':>7s}")
    for k, v in samples.items():
        m = statistics.median(v)
        print(f"{k:38s} {m * 1e3:10.2f} {m / args.n * 1e9:8.3f} {m / ref:7.2f}")


if __name__ == "__main__":
    main()
