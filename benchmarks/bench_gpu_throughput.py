"""Training throughput with each prior on a GPU, and the fused optimizer step (issue 20).

Two measurements, on the IWSLT-size Marian of :func:`hf_soft_diamond.tasks.models.build_translation_model`
(``"iwslt"``: 6+6 layers, d_model 512, FFN 1024, 4 heads, dropout 0.3; a fixed vocabulary of
8000 tokens, 36.2M parameters):

1. **Trainer throughput.** The same training run (synthetic fixed-length batches: no padding,
   ``--batch-size`` sentences of ``--src-len`` source and ``--tgt-len`` target tokens; torch's
   fused AdamW (``optim="adamw_torch_fused"`` on CUDA), constant learning rate, bf16 autocast
   by default; no logging, evaluation or saving inside the timed steps) through the plain
   ``transformers.Seq2SeqTrainer`` and through ``SoftDiamondSeq2SeqTrainer`` with each prior:
   ``none``, ``sas`` decoupled (alpha 0.5), ``pwd`` (p 0.8), ``l1``, ``stable_rank`` (spectral,
   refresh every 50 steps) and ``sas`` decoupled fused into ``RegularizedAdamW``
   (``reg_fused_optimizer``); where no mode is given the library picks it for the optimizer,
   and the JSON records the mode each arm ran in. After ``--warmup`` untimed steps (compilation, allocator),
   ``--repeats`` windows of ``--window`` steps are timed (the device synchronized at each
   window edge); **steps/s is the median over the windows**, tokens/s = steps/s x tokens per
   step (source + target tokens). The default window (50 steps) equals ``stable_rank``'s
   refresh interval, so every window pays exactly one full spectral refresh (an amortized
   figure, not a best case). The plain Trainer runs first and again last; the baseline is
   the mean of the two, and their difference is the drift of the machine during the run.
   Goals printed: elementwise priors within 3% of the plain Trainer's steps/s, spectral
   within 10%.
2. **Optimizer step.** One ``step()`` over all the model's parameters (random gradients),
   timed round-robin (median of ``--opt-repeats``, synchronized): ``torch.optim.AdamW``
   (``fused=True``) with and without weight decay on the regularized weights, torch's
   foreach AdamW, torch fused AdamW + the SaS hooks, and ``RegularizedAdamW`` without a prior,
   with SaS decoupled and with pWD (compiled kernels on CUDA).

The table goes to stdout and, as JSON, to ``--out`` (default: ``$GPU_CHECK_JSON``, else
``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``benchmarks/gpu_check.json``), rewritten
after every measurement so that an interrupted run keeps what it measured.

Usage::

    python benchmarks/bench_gpu_throughput.py                    # on the GPU (benchmarks/gpu_check.sh)
    python benchmarks/bench_gpu_throughput.py --device cpu --tiny   # CPU smoke run (seconds): the script works
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs; GPU machines may be offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: Trainer arms: (label, kind, regularizer fields). kind: "plain" (transformers' Seq2SeqTrainer),
#: "elementwise" or "spectral" (SoftDiamondSeq2SeqTrainer; the goal that applies).
TRAINER_ARMS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("plain Seq2SeqTrainer", "plain", None),
    ("none", "elementwise", {"regularizer": "none"}),
    ("sas decoupled a=0.5", "elementwise",
     {"regularizer": "sas", "reg_mode": "decoupled", "reg_strength": 2e-6, "sas_alpha": 0.5, "sas_gamma": 0.1}),
    ("pwd p=0.8", "elementwise", {"regularizer": "pwd", "reg_strength": 1e-4, "lp_p": 0.8}),
    ("l1", "elementwise", {"regularizer": "l1", "reg_strength": 1e-6}),
    ("stable_rank", "spectral", {"regularizer": "stable_rank", "reg_strength": 1e-3}),
    ("sas decoupled a=0.5, RegularizedAdamW", "elementwise",
     {"regularizer": "sas", "reg_mode": "decoupled", "reg_strength": 2e-6, "sas_alpha": 0.5, "sas_gamma": 0.1,
      "reg_fused_optimizer": True}),
    ("plain Seq2SeqTrainer (again)", "plain", None),
]
GOALS: dict[str, float] = {"elementwise": 0.03, "spectral": 0.10}  # max slowdown vs the plain Trainer

#: Optimizer-step settings: (label, "torch"/"torch+hooks"/"regularized", regularizer (name, kwargs) or None, extra).
OPTIMIZER_SETTINGS: list[tuple[str, str, tuple[str, dict[str, Any]] | None, dict[str, Any]]] = [
    ("torch AdamW fused=True", "torch", None, {"fused": True, "weight_decay": 0.0}),
    ("torch AdamW fused=True, wd=0.01", "torch", None, {"fused": True, "weight_decay": 0.01}),
    ("torch AdamW foreach", "torch", None, {"foreach": True, "weight_decay": 0.0}),
    ("torch AdamW fused=True + hooks: sas decoupled", "torch+hooks",
     ("sas", {"mode": "decoupled", "strength": 1e-4, "alpha": 0.5, "gamma": 0.1}), {"fused": True}),
    ("RegularizedAdamW: none", "regularized", None, {}),
    ("RegularizedAdamW: sas decoupled a=0.5", "regularized",
     ("sas", {"mode": "decoupled", "strength": 1e-4, "alpha": 0.5, "gamma": 0.1}), {}),
    ("RegularizedAdamW: pwd p=0.8", "regularized", ("pwd", {"strength": 1e-4, "p": 0.8}), {}),
]  # each RegularizedAdamW setting compiles its own kernels (seconds each on a GPU): kept to three


class FixedVocabulary:
    """What :func:`~hf_soft_diamond.tasks.models.build_translation_model` reads from a tokenizer:
    ``len()``, ``pad_token_id`` (0) and ``eos_token_id`` (1). Throughput does not depend on
    which tokens the ids stand for, so no tokenizer is trained."""

    pad_token_id = 0
    eos_token_id = 1

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


class SyntheticPairs(torch.utils.data.Dataset):
    """``n`` fixed-length pairs of random token ids in ``[2, vocab)`` (no padding, no special tokens)."""

    def __init__(self, n: int, src_len: int, tgt_len: int, vocab: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.src = torch.randint(2, vocab, (n, src_len), generator=gen)
        self.tgt = torch.randint(2, vocab, (n, tgt_len), generator=gen)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.src[i], "attention_mask": torch.ones_like(self.src[i]), "labels": self.tgt[i]}


def default_out() -> Path:
    """``$GPU_CHECK_JSON``, else ``$OUT/gpu_check.json``, else ``benchmarks/gpu_check.json``."""
    if os.environ.get("GPU_CHECK_JSON"):
        return Path(os.environ["GPU_CHECK_JSON"])
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return REPO / "benchmarks" / "gpu_check.json"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(args: argparse.Namespace):
    """The IWSLT-size Marian (``--tiny``: a 1+1-layer, d_model 32 Marian, for the smoke run), seed 0."""
    from hf_soft_diamond.tasks.models import build_translation_model

    vocab = FixedVocabulary(args.vocab)
    if args.tiny:
        return build_translation_model("micro", vocab, seed=0, d_model=32, encoder_layers=1, decoder_layers=1,
                                       encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                                       decoder_attention_heads=2, max_position_embeddings=64)
    return build_translation_model("iwslt", vocab, seed=0)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device, for the JSON and the header line."""
    import transformers

    import hf_soft_diamond

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__, "hf_soft_diamond": hf_soft_diamond.__version__,
        "device": str(device), "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    return env


# ------------------------------------------------------------------------------------ Trainer
def _window_timer(device: torch.device, warmup: int, window: int):
    """A TrainerCallback timing windows of ``window`` optimizer steps after ``warmup`` steps."""
    from transformers import TrainerCallback

    class WindowTimer(TrainerCallback):
        def __init__(self) -> None:
            self.edges: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            done = state.global_step - warmup
            if done >= 0 and done % window == 0:
                synchronize(device)
                self.edges.append(time.perf_counter())
            return control

        def window_seconds(self) -> list[float]:
            return [b - a for a, b in zip(self.edges, self.edges[1:])]

    return WindowTimer()


def run_trainer_arm(args: argparse.Namespace, device: torch.device, label: str, kind: str,
                    fields: dict[str, Any] | None, workdir: Path) -> dict[str, Any]:
    """Train one arm for ``warmup + window * repeats`` steps; its steps/s and tokens/s."""
    from transformers import PrinterCallback, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from hf_soft_diamond.trainer import SoftDiamondSeq2SeqTrainer
    from hf_soft_diamond.training_args import SoftDiamondSeq2SeqTrainingArguments

    steps = args.warmup + args.window * args.repeats
    common: dict[str, Any] = dict(
        output_dir=str(workdir / label.replace(" ", "_").replace("=", "").replace(",", "")), max_steps=steps,
        per_device_train_batch_size=args.batch_size, learning_rate=5e-4, lr_scheduler_type="constant",
        warmup_steps=0, optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        seed=0, dataloader_num_workers=0, use_cpu=device.type == "cpu",
        bf16=args.precision == "bf16", fp16=args.precision == "fp16",
    )
    data = SyntheticPairs(args.batch_size * 16, args.src_len, args.tgt_len, args.vocab)
    timer = _window_timer(device, args.warmup, args.window)
    model = build_model(args)
    t0 = time.perf_counter()
    if kind == "plain":
        trainer: Any = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**common), train_dataset=data,
                                      callbacks=[timer])
    else:
        reg_fields = {"reg_fused_backend": args.backend, **(fields or {})}
        soft_args = SoftDiamondSeq2SeqTrainingArguments(**common, **reg_fields)
        trainer = SoftDiamondSeq2SeqTrainer(model=model, args=soft_args, train_dataset=data, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would interleave with the table
    trainer.train()
    total = time.perf_counter() - t0
    windows = timer.window_seconds()
    if len(windows) != args.repeats:
        raise RuntimeError(f"{label}: timed {len(windows)} windows, expected {args.repeats}")
    rates = [args.window / s for s in windows]
    steps_per_s = statistics.median(rates)
    tokens_per_step = args.batch_size * (args.src_len + args.tgt_len)
    handle = getattr(trainer, "regularizer_handle", None)
    result = {
        "arm": label, "kind": kind, "trainer": type(trainer).__name__, "fields": fields or {},
        "steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * tokens_per_step,
        "window_steps_per_s": rates, "run_s": total, "steps": steps,
        "regularizer_steps": None if handle is None else handle.regularizer.step,
        "reg_mode": None if handle is None else handle.regularizer.mode,  # as resolved for the optimizer
        "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
    }
    if handle is not None and hasattr(handle.regularizer, "refresh_count"):
        result["spectral_refreshes"] = handle.regularizer.refresh_count
    del trainer, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def goal_lines(arms: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Baseline (mean steps/s of the plain runs) and each prior's slowdown against its goal."""
    plain = [a["steps_per_s"] for a in arms if a["kind"] == "plain"]
    baseline = statistics.fmean(plain)
    goals = []
    for a in arms:
        if a["kind"] in GOALS:
            slowdown = 1.0 - a["steps_per_s"] / baseline
            a["relative_to_plain"] = a["steps_per_s"] / baseline
            goals.append({"arm": a["arm"], "kind": a["kind"], "slowdown": slowdown, "limit": GOALS[a["kind"]],
                          "met": slowdown <= GOALS[a["kind"]]})
    return baseline, goals


# ------------------------------------------------------------------------------------ optimizer step
def optimizer_step_table(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Median ``step()`` time of every optimizer setting on the same parameters and gradients."""
    from hf_soft_diamond import attach_regularizer, build_regularizer, select_parameters
    from hf_soft_diamond.optim import RegularizedAdamW

    model = build_model(args).to(device)
    named = select_parameters(model)
    reg_ids = {id(p) for _, p in named}
    params = list(model.parameters())
    regularized = [p for p in params if id(p) in reg_ids]
    others = [p for p in params if id(p) not in reg_ids]
    gen = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype) * 1e-3
    lr = 1e-4
    steps: dict[str, Callable[[], Any]] = {}
    for label, kind, spec, extra in OPTIMIZER_SETTINGS:
        reg = None if spec is None else build_regularizer(spec[0], fused_backend=args.backend, **spec[1])
        if kind == "regularized":
            opt: torch.optim.Optimizer = RegularizedAdamW(params, reg, named, lr=lr, fused_backend=args.backend,
                                                          check_finite_every=0)
        else:
            wd = extra.get("weight_decay", 0.0)
            flags = {k: v for k, v in extra.items() if k != "weight_decay"}
            opt = torch.optim.AdamW([{"params": regularized, "weight_decay": wd},
                                     {"params": others, "weight_decay": 0.0}], lr=lr, **flags)
            if reg is not None:
                attach_regularizer(opt, reg, named, check_finite_every=0)
        steps[label] = opt.step
    first: dict[str, float] = {}
    for label, step in steps.items():  # compile kernels and allocate state outside the timed rounds
        synchronize(device)
        t0 = time.perf_counter()
        step()
        step()
        synchronize(device)
        first[label] = time.perf_counter() - t0
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.opt_repeats):
        for label, step in steps.items():
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            samples[label].append(time.perf_counter() - t0)
    base = statistics.median(samples["torch AdamW fused=True"])
    rows = []
    for label, times in samples.items():
        ms = statistics.median(times) * 1e3
        rows.append({"setting": label, "step_ms": ms, "vs_torch_fused": ms / (base * 1e3),
                     "first_two_steps_s": first[label]})
    del model, params, steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true",
                    help="smoke run: 1+1-layer d_model 32 Marian, vocab 256, batch 4 x (8+8) tokens, 2 x 2 steps")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default: see the module docstring)")
    ap.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                    help="autocast of the Trainer runs (default: bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--backend", choices=["auto", "compile", "eager"], default=None,
                    help="the priors' kernels (default: auto on cuda (compiled with triton), eager on cpu)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 8000; --tiny: 256)")
    ap.add_argument("--batch-size", type=int, default=None, help="sentences per step (default 128; --tiny: 4)")
    ap.add_argument("--src-len", type=int, default=None, help="source tokens per sentence (default 32; --tiny: 8)")
    ap.add_argument("--tgt-len", type=int, default=None, help="target tokens per sentence (default 32; --tiny: 8)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per arm (default 10; --tiny: 1)")
    ap.add_argument("--window", type=int, default=None, help="steps per timed window (default 50; --tiny: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed windows per arm (default 3; --tiny: 2)")
    ap.add_argument("--opt-repeats", type=int, default=None, help="timed optimizer-step rounds (default 20; --tiny: 3)")
    ap.add_argument("--arms", nargs="+", metavar="TEXT",
                    help="only the Trainer arms whose label contains one of these (the plain runs always run)")
    ap.add_argument("--skip-trainer", action="store_true", help="only the optimizer-step table")
    ap.add_argument("--skip-optimizer", action="store_true", help="only the Trainer table")
    ap.add_argument("--pytest-rc", type=int, default=None,
                    help="exit status of the CUDA tests run just before (gpu_check.sh), stored in the JSON")
    args = ap.parse_args(argv)
    tiny = args.tiny
    defaults = {"vocab": (8000, 256), "batch_size": (128, 4), "src_len": (32, 8), "tgt_len": (32, 8),
                "warmup": (10, 1), "window": (50, 2), "repeats": (3, 2), "opt_repeats": (20, 3)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if args.warmup < 1 or args.window < 1 or args.repeats < 1 or args.opt_repeats < 1:
        ap.error("--warmup, --window, --repeats and --opt-repeats must be >= 1")
    cuda = args.device.startswith("cuda")
    if args.precision is None:
        args.precision = "bf16" if cuda else "fp32"
    if args.backend is None:
        args.backend = "auto" if cuda else "eager"
    if args.out is None:
        args.out = default_out()
    return args


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_throughput: no CUDA device (torch.cuda.is_available() is False); "
              "use --device cpu --tiny for a smoke run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    n_params = sum(p.numel() for p in build_model(args).parameters())
    settings = {k: getattr(args, k) for k in ("device", "tiny", "precision", "backend", "vocab", "batch_size",
                                              "src_len", "tgt_len", "warmup", "window", "repeats", "opt_repeats")}
    report: dict[str, Any] = {
        "what": "issue 20 GPU check: Trainer throughput per prior vs plain Seq2SeqTrainer; optimizer step",
        "environment": environment(device), "settings": settings,
        "model": {"size": "tiny smoke" if args.tiny else "iwslt", "parameters": n_params,
                  "tokens_per_step": args.batch_size * (args.src_len + args.tgt_len)},
        "pytest_rc": args.pytest_rc, "trainer": [], "goals": [], "optimizer_step": [], "complete": False,
    }
    env = report["environment"]
    print(f"torch {env['torch']} (CUDA {env['torch_cuda']}), transformers {env['transformers']}, triton "
          f"{env['triton']}, device {env.get('gpu', device)}; model {report['model']['size']} "
          f"{n_params / 1e6:.1f}M parameters, {report['model']['tokens_per_step']} tokens/step, {args.precision}, "
          f"prior kernels {args.backend}", flush=True)
    _write(args.out, report)

    if not args.skip_trainer:
        arms = [a for a in TRAINER_ARMS if a[1] == "plain" or args.arms is None or any(t in a[0] for t in args.arms)]
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            for label, kind, fields in arms:
                result = run_trainer_arm(args, device, label, kind, fields, Path(tmp))
                report["trainer"].append(result)
                print(f"  {label}: {result['steps_per_s']:.2f} steps/s, {result['tokens_per_s']:.0f} tokens/s "
                      f"(windows {', '.join(f'{r:.2f}' for r in result['window_steps_per_s'])}; "
                      f"{result['run_s']:.1f} s)", flush=True)
                _write(args.out, report)
        baseline, goals = goal_lines(report["trainer"])
        report["goals"] = goals
        report["plain_steps_per_s"] = baseline
        _write(args.out, report)
        print(f"\n| Trainer arm | mode | optimizer | steps/s (median of {args.repeats} x {args.window}) | tokens/s | "
              f"vs plain |\n|---|---|---|---:|---:|---:|")
        for a in report["trainer"]:
            rel = a.get("relative_to_plain")
            print(f"| {a['arm']} | {a['reg_mode'] or ''} | {a['optimizer']} | {a['steps_per_s']:.2f} | "
                  f"{a['tokens_per_s']:.0f} | {'' if rel is None else f'{rel - 1.0:+.1%}'} |")
        plain = [a["steps_per_s"] for a in report["trainer"] if a["kind"] == "plain"]
        print(f"\nplain Trainer baseline {baseline:.2f} steps/s (first and last run: "
              f"{', '.join(f'{p:.2f}' for p in plain)}; drift {abs(plain[0] - plain[-1]) / baseline:.1%})")
        for g in goals:
            print(f"GOAL {g['kind']} prior within {g['limit']:.0%} of plain Trainer: {g['arm']}: slowdown "
                  f"{g['slowdown']:+.1%} -> {'MET' if g['met'] else 'NOT MET'}")

    if not args.skip_optimizer:
        rows = optimizer_step_table(args, device)
        report["optimizer_step"] = rows
        _write(args.out, report)
        print(f"\n| optimizer step (all parameters) | ms (median of {args.opt_repeats}) | vs torch fused AdamW | "
              f"first two steps s |\n|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['setting']} | {r['step_ms']:.2f} | {r['vs_torch_fused']:.2f}x | "
                  f"{r['first_two_steps_s']:.1f} |")

    report["complete"] = True
    report["elapsed_s"] = time.perf_counter() - started
    _write(args.out, report)
    print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
