"""Build time of a SaS unit table vs scipy.stats.levy_stable.pdf on the same grid.

Run: ``python benchmarks/bench_sas_table.py [--alphas 0.3 0.5 ... 1.9] [--sample 40]``

For each alpha: the median wall time of 31 fresh builds of a table (no disk or memory
cache: the float64 build plus the per-cell interpolation coefficients), and scipy's
``levy_stable.pdf`` timed on ``--sample`` grid points evenly spread over the grid's
index range (median of 3 passes) and extrapolated per point to the full grid (scipy
would need the pdf at every grid point, plus its derivative, to build the same table:
the ratio is therefore a lower bound). Also: max relative error of the table's score against a
4-point central difference of scipy's logpdf on a log-spaced sample with
1e-2 <= z <= 1e3, and the per-element cost of the reader (eager and torch.compile)
next to one elementwise multiply.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.stats import levy_stable

from hf_soft_diamond.priors import sas as S
from hf_soft_diamond.priors.sas import build as sas_build


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build_fresh(alpha: float, grid_step: float) -> S.SasTable:
    lo, h, n = sas_build._grid_params(alpha, grid_step, None, None)
    r, q, _ = S.build_unit_table(alpha, lo, lo + h * (n - 1), h)
    table = S.SasTable(alpha, lo, h, r, q)  # also makes the float32/float64 cell tensors
    return table


def score_error_vs_scipy(table: S.SasTable, alpha: float, npts: int = 25) -> float:
    z = np.logspace(-2, 3, npts)
    d = 1e-4 * z
    lp = lambda y: levy_stable.logpdf(y, alpha, 0)  # noqa: E731
    ref = (-lp(z + 2 * d) + 8 * lp(z + d) - 8 * lp(z - d) + lp(z - 2 * d)) / (12 * d)
    got = table.score_unit(torch.from_numpy(z)).numpy()
    return float(np.max(np.abs(got / ref - 1)))


def reader_cost(table: S.SasTable, numel: int = 1 << 22) -> tuple[float, float, float]:
    w = torch.randn(numel, generator=torch.Generator().manual_seed(0)) * 0.05
    eager = lambda: table.score_unit(w.abs() * 2.0)  # noqa: E731
    fn = torch.compile(lambda x: table.score_unit(x.abs() * 2.0), dynamic=True, fullgraph=True)
    fn(w)
    mul = lambda: w * 2.0  # noqa: E731
    return tuple(_median_time(f, 7) / numel * 1e9 for f in (eager, lambda: fn(w), mul))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.7, 1.9])
    ap.add_argument("--grid-step", type=float, default=S.DEFAULT_GRID_STEP)
    ap.add_argument("--sample", type=int, default=40, help="scipy points timed per alpha")
    ap.add_argument("--no-reader", action="store_true", help="skip the reader timing (torch.compile)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, grid_step {args.grid_step}")
    print(f"{'alpha':>5} {'n':>6} {'build ms':>9} {'scipy ms/pt':>11} {'scipy full s':>12} "
          f"{'ratio':>8} {'max rel err':>11}")
    for alpha in args.alphas:
        build_fresh(alpha, args.grid_step)  # warm-up (imports, caches of scipy.special)
        t_build = _median_time(lambda: build_fresh(alpha, args.grid_step), 31)
        table = build_fresh(alpha, args.grid_step)
        idx = np.linspace(0, table.n - 1, args.sample).round().astype(int)
        z = np.exp(table.t_min + table.grid_step * idx)
        per_pt = _median_time(lambda: [levy_stable.pdf(zi, alpha, 0) for zi in z], 3) / len(z)
        full = per_pt * table.n
        err = score_error_vs_scipy(table, alpha)
        print(f"{alpha:5.2f} {table.n:6d} {t_build * 1e3:9.2f} {per_pt * 1e3:11.3f} {full:12.2f} "
              f"{full / t_build:8.0f} {err:11.1e}")
    if not args.no_reader:
        table = S.get_sas_table(1.5, grid_step=args.grid_step, disk_cache=False)
        e, c, m = reader_cost(table)
        print(f"reader, alpha=1.5, 4M float32: eager {e:.2f} ns/elem, compiled {c:.2f} ns/elem, "
              f"one multiply {m:.2f} ns/elem")


if __name__ == "__main__":
    main()
