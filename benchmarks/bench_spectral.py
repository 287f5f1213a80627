"""Cost and accuracy of the spectral regularizers on a Marian-like Transformer step (CPU).

Target: at the default ``refresh_every`` the amortized overhead of each spectral
regularizer (full spectrum every ``refresh_every`` steps + the per-step surrogate) is
at most 10% of the unregularized training step.

Measured side by side in one run, on the same model (d_model 512, 6+6 layers, FFN
1024, 4 heads, vocab 8000; batch 32 x 32 tokens; AdamW lr 1e-3, weight_decay 0):

1. isolated: one full refresh (batched eigh of every regularized matrix, plus the
   frozen-gradient matmuls where the penalty needs them) and one surrogate step
   (power iteration + gradient add) over the regularized weights;
2. training (AdamW, constant ``--lr``, default 1e-4): for each regularizer, ``periods * refresh_every`` pairs of steps,
   alternating an unregularized AdamW step and a regularized one (two optimizers on
   the same model, so both see the same machine load; the training-step pair comes
   with one weight update each); amortized overhead =
   ``sum(regularized) / sum(unregularized) - 1`` over whole refresh periods (refresh
   steps included), and the median-based model ``(surrogate + refresh/refresh_every)
   / median unregularized step``;
3. accuracy: at a few steps of each period (outside the timed region) the penalty
   value the regularizer uses (its surrogate estimate) against a full spectrum of the
   same weights, and the surrogate gradient against the exact one (cosine, relative
   error).

Usage::

    PYTHONPATH=. python benchmarks/bench_spectral.py [--refresh-every N] [--periods 2] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_soft_diamond import attach_regularizer, build_regularizer, select_parameters
from hf_soft_diamond.regularizers.spectral import DEFAULT_REFRESH_EVERY

from _common import marian_like, median_time  # noqa: E402 - benchmarks/ is on sys.path

SETTINGS = [
    ("weighted_alpha", {}),
    ("stable_rank", {}),
    ("powerlaw_prior", {"a": 2.0, "lambda_min": 0.1}),
    ("frechet_prior", {"a": 2.0, "s": 1.0, "m": 0.0}),
]
STRENGTH = 1e-3


def exact_grads(name: str, kw: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
    reg = build_regularizer(name, strength=1.0, refresh_every=1, **kw)
    grads = [torch.zeros_like(p) for p in params]
    reg.add_coupled_grad_(params, grads, 0.0)
    return grads


def surrogate_grads(reg, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient ``reg`` would add now (strength 1), without advancing or refreshing it."""
    grads = [torch.zeros_like(p) for p in params]
    states = [reg._states[id(p)] for p in params]
    saved = [(st.sigma, st.u, st.v) for st in states]
    for p, g, st in zip(params, grads, states):
        reg._track(p, st)
        st.fro2 = reg._fro2(p) if reg._needs_fro() else 0.0
        reg._add_grad_(p, g, st, 1.0)
    for st, (s, u, v) in zip(states, saved):
        st.sigma, st.u, st.v = s, u, v
    return grads


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    fa = torch.cat([x.flatten().double() for x in a])
    fb = torch.cat([x.flatten().double() for x in b])
    cos = float(fa @ fb / (fa.norm() * fb.norm()))
    return cos, float((fa - fb).norm() / fb.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refresh-every", type=int, default=None, help="default: each regularizer's default")
    ap.add_argument("--periods", type=int, default=2, help="refresh periods timed per regularizer")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--method", default="eigh", choices=["eigh", "svd"])
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (constant)")
    ap.add_argument("--only", nargs="*", default=None, help="regularizer names to run")
    ap.add_argument("--quick", action="store_true", help="isolated measurement only")
    args = ap.parse_args()
    settings = [s for s in SETTINGS if args.only is None or s[0] in args.only]

    model = marian_like(args.vocab)
    named = select_parameters(model)
    params = [p for _, p in named]
    shapes = sorted({tuple(p.shape) for p in params})
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, method {args.method}, refresh_every "
          f"{args.refresh_every or {n: DEFAULT_REFRESH_EVERY[n] for n, _ in settings}}")
    print(f"model params {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M; regularized "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M in {len(params)} matrices, shapes {shapes}")

    # ------------------------------------------------------------- isolated
    print("\n== isolated (median of 3) ==")
    iso = {}
    zeros = [torch.zeros_like(p) for p in params]
    for name, kw in settings:
        reg = build_regularizer(name, strength=STRENGTH, refresh_every=10**9, method=args.method, **kw)
        t_refresh = median_time(lambda: reg.refresh(params), 3)
        reg.step = 1
        t_sur = median_time(lambda: reg.add_coupled_grad_(params, zeros, 0.0), 5)
        iso[name] = (t_refresh, t_sur)
        print(f"{name:16s} full refresh {t_refresh:6.3f} s   surrogate step {t_sur * 1e3:6.1f} ms")
    if args.quick:
        return

    # ------------------------------------------------------------- training
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(2, args.vocab, (32, 32), generator=gen),
             "labels": torch.randint(2, args.vocab, (32, 32), generator=gen)}
    print(f"\n== training steps: {args.periods} periods x refresh_every pairs (unregularized, regularized) ==")
    rows = []
    for name, kw in settings:
        R = args.refresh_every or DEFAULT_REFRESH_EVERY[name]
        opt_base = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, foreach=True)
        opt_reg = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, foreach=True)
        reg = build_regularizer(name, strength=STRENGTH, refresh_every=R, method=args.method, **kw)
        handle = attach_regularizer(opt_reg, reg, named, check_finite_every=0)

        def timed(opt):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()
            return time.perf_counter() - t0

        timed(opt_base)  # warm-up: AdamW state
        base_t, reg_t, val_err, grad_cos, grad_err = [], [], [], [], []
        probes = {1, R // 2, R - 1}
        for i in range(args.periods * R):
            base_t.append(timed(opt_base))
            reg_t.append(timed(opt_reg))
            if i % R in probes:  # accuracy, outside the timed region
                with torch.no_grad():
                    est = reg.layer_values(params)
                    exact = reg.layer_values(params, exact=True)
                    val_err.append(abs(sum(est) - sum(exact)) / sum(abs(x) for x in exact))
                    c, e = compare(surrogate_grads(reg, params), exact_grads(name, kw, params))
                    grad_cos.append(c)
                    grad_err.append(e)
                    print(f"  probe step {i:3d} (offset {i % R:2d} after refresh): value rel err {val_err[-1]:.2e}, "
                          f"grad cos {c:.4f}, grad rel err {e:.2e}", flush=True)
        handle.remove()
        base_sum, reg_sum = sum(base_t), sum(reg_t)
        amort = reg_sum / base_sum - 1.0
        refresh_steps = [reg_t[i] for i in range(len(reg_t)) if i % R == 0]
        other = [reg_t[i] for i in range(len(reg_t)) if i % R != 0]
        base_med = statistics.median(base_t)
        model_est = (iso[name][1] + iso[name][0] / R) / base_med
        rows.append((name, R, base_med, statistics.median(other), statistics.median(refresh_steps), amort, model_est,
                     max(val_err), min(grad_cos), max(grad_err)))
        print(f"{name:16s} R={R} base median {base_med:.3f} s | "
              f"reg median {statistics.median(other):.3f} s, refresh step "
              f"{statistics.median(refresh_steps):.3f} s | amortized overhead {100 * amort:5.1f}% "
              f"(median model {100 * model_est:4.1f}%) | value rel err max {max(val_err):.2e} | "
              f"grad cos min {min(grad_cos):.4f}, rel err max {max(grad_err):.2e}")

    print("\n| regularizer | refresh_every | unregularized step (median) | "
          "regularized non-refresh step (median) | refresh step "
          "(median) | amortized overhead (sums) | model: (surrogate + refresh/R) / step | value rel. err (max) "
          "| grad cosine (min) | grad rel. err (max) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} s | {r[3]:.3f} s | {r[4]:.3f} s | "
              f"{100 * r[5]:.1f}% | {100 * r[6]:.1f}% | "
              f"{r[7]:.1e} | {r[8]:.4f} | {r[9]:.1e} |")
    print("(value rel. err = |sum of estimates - sum of exact| / sum |exact| over layers)")


if __name__ == "__main__":
    main()
