"""Optimizer-step cost of the regularizers: hook path vs the fused ``RegularizedAdamW`` (CPU).

Target (issue 2): the extra time of the SaS score and of pWD is at most 1.5x the extra
time of AdamW's own built-in weight decay, on the Marian-like model (d_model 512, 6+6
layers, FFN 1024). Every setting below is one optimizer ``step()`` over all of the
model's parameters (random gradients; the regularizer and the decay act on the default
selection, as the Trainer groups them), timed round-robin in one run so that all see
the same machine load:

* ``torch AdamW`` (``foreach=True``) with ``weight_decay`` 0 and 0.01: the reference
  and its decay's extra time (the issue's yardstick);
* ``torch AdamW`` + the regularizer's step hooks (:func:`hf_soft_diamond.attach_regularizer`);
* ``RegularizedAdamW`` (one compiled loop per tensor) without a regularizer, with L2
  decoupled (= AdamW's decay, fused) and with the priors.

Usage::

    python benchmarks/bench_fused_adamw.py [--repeats 15] [--backend auto|compile|eager] [--priors pwd]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from hf_soft_diamond import attach_regularizer, build_regularizer, select_parameters
from hf_soft_diamond.fused import BACKENDS
from hf_soft_diamond.optim import RegularizedAdamW

from _common import TARGET_PRIORS, marian_like  # noqa: E402 - benchmarks/ is on sys.path

PRIORS = [(label, name, {"mode": mode, "strength": 1e-4, **kw}) for label, name, mode, kw in TARGET_PRIORS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds (each times every setting once)")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--priors", nargs="+", metavar="TEXT",
                    help="only the priors whose label contains one of these (e.g. 'pwd p=0.8'); the "
                         "references (torch AdamW, RegularizedAdamW without/with L2) always run")
    args = ap.parse_args()
    priors = [p for p in PRIORS if args.priors is None or any(t in p[0] for t in args.priors)]
    warnings.simplefilter("ignore")  # the decay-on-regularized warning of the reference setting

    model = marian_like(args.vocab)
    named = select_parameters(model)
    reg_ids = {id(p) for _, p in named}
    params = list(model.parameters())
    regularized = [p for p in params if id(p) in reg_ids]
    others = [p for p in params if id(p) not in reg_ids]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n_reg = sum(p.numel() for p in regularized)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, backend {args.backend}; "
          f"params {sum(p.numel() for p in params) / 1e6:.1f}M, regularized {n_reg / 1e6:.1f}M in "
          f"{len(regularized)} tensors")
    lr = 1e-4

    def torch_adamw(wd: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": regularized, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}],
                                 lr=lr, foreach=True)

    settings: dict[str, Callable[[], object]] = {}
    ref0, ref_wd = torch_adamw(0.0), torch_adamw(0.01)
    settings["torch AdamW wd=0"] = ref0.step
    settings["torch AdamW wd=0.01"] = ref_wd.step
    for label, name, kw in priors:
        opt = torch_adamw(0.0)
        attach_regularizer(opt, build_regularizer(name, fused_backend=args.backend, **kw), named,
                           check_finite_every=0)
        settings[f"torch AdamW + hooks: {label}"] = opt.step
    fused = {"none": None, "l2 decoupled 0.01 (AdamW's decay)": ("l2", {"mode": "decoupled", "strength": 0.01})}
    fused.update({label: (name, kw) for label, name, kw in priors})
    for label, spec in fused.items():
        reg = None if spec is None else build_regularizer(spec[0], fused_backend=args.backend, **spec[1])
        opt = RegularizedAdamW(params, reg, named, lr=lr, fused_backend=args.backend, check_finite_every=0)
        settings[f"RegularizedAdamW: {label}"] = opt.step

    first: dict[str, float] = {}
    for label, fn in settings.items():  # compile and allocate state outside the timed rounds
        t0 = time.perf_counter()
        fn()
        first[label] = time.perf_counter() - t0
        fn()
    samples: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for label, fn in settings.items():
            t0 = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    decay = med["torch AdamW wd=0.01"] - med["torch AdamW wd=0"]
    print(f"\ntorch AdamW's decay: {decay:.2f} ms extra per step (the yardstick)\n")
    print(f"| setting | step ms (median of {args.repeats}) | extra ms vs its unregularized optimizer | "
          f"extra / AdamW's decay extra | first step s (compile) |")
    print("|---|---:|---:|---:|---:|")
    for label, ms in med.items():
        base = med["torch AdamW wd=0"] if label.startswith("torch") else med["RegularizedAdamW: none"]
        extra = ms - base
        print(f"| {label} | {ms:.2f} | {extra:+.2f} | {extra / decay:.2f} | {first[label]:.1f} |")


if __name__ == "__main__":
    main()
