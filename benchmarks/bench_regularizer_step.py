"""Per-step cost of the regularizers on a Marian-like Transformer step (CPU).

Target (issue 2): the extra time of the SaS score (table read with interpolation)
and of pWD is at most 1.5x the extra time of AdamW's built-in weight decay.

Two measurements, side by side in one run:

1. isolated: the regularizer's own per-step work over the model's regularized
   weights (its pre- and post-step hooks) against AdamW's decay alone
   (``torch._foreach_mul_(params, 1 - lr*wd)``, what ``AdamW(foreach=True)`` does);
2. in a full training step (forward, backward, AdamW step): median step time with
   each regularizer minus the median step time of AdamW(weight_decay=0).

Usage::

    python benchmarks/bench_regularizer_step.py [--steps 12] [--backend auto|eager|compile] [--quick]
"""

from __future__ import annotations

import argparse

import torch

from hf_soft_diamond import attach_regularizer, build_regularizer, select_parameters
from hf_soft_diamond.fused import BACKENDS

from _common import TARGET_PRIORS, marian_like, median_time  # noqa: E402 - benchmarks/ is on sys.path

SETTINGS = [
    *TARGET_PRIORS,
    ("l1 prox", "l1", "decoupled", {}),
    ("l2 decoupled (ours)", "l2", "decoupled", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="timed full training steps per setting")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats of the isolated hook work")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--quick", action="store_true", help="isolated measurement only")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = marian_like(args.vocab)
    named = select_parameters(model)
    params = [p for _, p in named]
    n_reg = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, backend {args.backend}")
    print(f"model params {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M, regularized {n_reg / 1e6:.1f}M "
          f"in {len(params)} tensors")
    lr, wd = 1e-3, 0.01
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3

    # ---------------------------------------------------------------- isolated
    print("\n== isolated per-step work over the regularized weights ==")
    def adamw_decay():
        with torch.no_grad():
            torch._foreach_mul_(params, 1 - lr * wd)

    base = median_time(adamw_decay, args.repeats, warmup=2)
    print(f"{'AdamW decay (foreach mul_)':28s} {base * 1e3:8.2f} ms   ratio 1.00")
    for label, name, mode, kw in SETTINGS:
        reg = build_regularizer(name, strength=1e-6, mode=mode, fused_backend=args.backend, **kw)
        opt = torch.optim.SGD(params, lr=0.0)  # lr 0: the optimizer itself does nothing measurable
        handle = attach_regularizer(opt, reg, named)

        @torch.no_grad()
        def work(reg=reg):
            if reg.mode == "coupled":
                reg.add_coupled_grad_(params, [p.grad for p in params], lr)
            else:
                reg.decoupled_pre_step_(params, lr)
                reg.decoupled_post_step_(params, lr)

        t = median_time(work, args.repeats, warmup=2)
        print(f"{label:28s} {t * 1e3:8.2f} ms   ratio {t / base:5.2f}")
        handle.remove()
    if args.quick:
        return

    # ---------------------------------------------------------------- full step
    print("\n== full training step (batch 32 x 32 tokens, AdamW) ==")
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(2, args.vocab, (32, 32), generator=gen),
        "labels": torch.randint(2, args.vocab, (32, 32), generator=gen),
    }

    def make_step(weight_decay: float, reg_setting=None):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
        handle = None
        if reg_setting is not None:
            _, name, mode, kw = reg_setting
            handle = attach_regularizer(opt, build_regularizer(name, strength=1e-6, mode=mode,
                                                               fused_backend=args.backend, **kw), named)

        def step():
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()

        return step, handle

    results = {}
    for label, wdv, setting in [("AdamW wd=0", 0.0, None), ("AdamW wd=0.01", wd, None)] + [
        (s[0], 0.0, s) for s in SETTINGS
    ]:
        step, handle = make_step(wdv, setting)
        results[label] = median_time(step, args.steps, warmup=2)
        if handle:
            handle.remove()
    plain = results["AdamW wd=0"]
    decay_extra = results["AdamW wd=0.01"] - plain
    print(f"{'AdamW wd=0':28s} {plain * 1e3:8.1f} ms")
    for label, t in results.items():
        if label == "AdamW wd=0":
            continue
        extra = t - plain
        print(f"{label:28s} {t * 1e3:8.1f} ms  extra {extra * 1e3:7.1f} ms ({100 * extra / plain:5.1f}% of step)"
              f"  extra/AdamW-decay-extra {extra / decay_extra if decay_extra > 0 else float('nan'):5.2f}")


if __name__ == "__main__":
    main()
