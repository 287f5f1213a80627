"""What the translation and image jobs share: the start of a run and its end.

A job is ``start_run`` (parse the flags or a JSON config, logging, seed, the checkpoint to
resume, the checks that can fail before any work) -> the task's data, model and
``Trainer`` inside ``run_output_dir`` (nothing half-written is left when it fails) ->
``train_and_evaluate`` -> the task's final evaluation -> ``finish_run``.

The end of a run (:func:`finish_run`) measures the trained model and writes what
people read: the sparsity report, the prune curve (task metric after global
magnitude pruning of the regularized weights at the fractions of docs/methods.md §7.2), the plots
(with per-layer Hill alpha over training when the spectrum monitor ran),
``all_results.json`` and the model card ``README.md``; then it prints the task's summary and
pushes to the Hub when asked. Data flows one way: it reads the trained model and never
changes it (pruning happens on the fly and is undone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

from ...pruning import DEFAULT_PRUNE_FRACTIONS as PRUNE_FRACTIONS

logger = logging.getLogger(__name__)

FINAL_SPLITS: tuple[str, ...] = ("test", "validation")


@dataclass
class RunDataArguments:
    """The data arguments both jobs share: truncation, the final split, the prune curve and the
    spectrum monitor. Each task's data arguments extend it (and may restate a field's default)."""

    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set."})
    final_split: str = field(default="test", metadata={
        "help": "Split of the final evaluation and the prune curve: 'test' (validation when there is no test split) or "
                "'validation' (hyperparameter tuning: the test split is never read; metrics are eval_*)."})
    prune_fractions: list[float] = field(default_factory=lambda: list(PRUNE_FRACTIONS), metadata={
        "help": "Fractions of the regularized weights pruned by global magnitude for the prune curve (empty: "
                "`--prune_fractions` alone or [] in JSON: no curve)."})
    prune_eval_samples: int = field(default=2000, metadata={
        "help": "Examples of the final split evaluated at each prune fraction."})
    spectrum_every: int = field(default=0, metadata={
        "help": "Log per-layer spectrum statistics (Hill alpha, weighted alpha, stable rank, lambda_max) every this "
                "many steps with SpectrumCallback, for any regularizer, and plot alpha over training (0: off)."})

    def __post_init__(self) -> None:
        if self.final_split not in FINAL_SPLITS:
            raise ValueError(f"`final_split` must be one of {FINAL_SPLITS}, got {self.final_split!r}.")
        if self.spectrum_every < 0:
            raise ValueError(f"`spectrum_every` must be >= 0 (0: off), got {self.spectrum_every}.")
        if self.prune_eval_samples < 1:
            raise ValueError(f"`prune_eval_samples` must be >= 1, got {self.prune_eval_samples}.")
        for f in self.prune_fractions:
            if not 0.0 <= f < 1.0:
                raise ValueError(f"`prune_fractions` must lie in [0, 1), got {f}.")

    def install_spectrum_monitor(self, trainer: Any) -> None:
        """Log spectrum statistics every ``spectrum_every`` steps (no-op when 0)."""
        if self.spectrum_every:
            from ...spectrum_monitor import SpectrumCallback

            SpectrumCallback(every=self.spectrum_every).install(trainer)


def final_split_and_prefix(final_split: str, available: Sequence[str]) -> tuple[str, str]:
    """The split the final evaluation reads and its metric prefix.

    ``"test"``: the test split (``test_*`` metrics), or the validation split when the data
    has none. ``"validation"`` (hyperparameter tuning): the validation split with ``eval_*``
    metrics; the test split is never read.
    """
    if final_split == "validation":
        if "validation" not in available:
            raise ValueError("`final_split` is 'validation' but the data has no validation split.")
        return "validation", "eval"
    return ("test" if "test" in available else "validation"), "test"


def start_run(argument_classes: Sequence[type], argv: Sequence[str] | None = None, *,
              configure: Callable[[Any, Any, Any], None] | None = None) -> tuple[Any, Any, Any, float]:
    """The start both jobs share; returns ``(model_args, data_args, training_args, start_time)``.

    Parses ``argv`` into the three argument dataclasses, sets up logging (INFO on the main
    process), applies ``configure(model_args, data_args, training_args)`` (a task's recipe),
    seeds, resolves ``resume_from_checkpoint`` and runs :func:`check_before_work`. Nothing is
    written yet. ``start_time`` is ``time.perf_counter()`` for the run's ``wall_time_s``.
    """
    import datasets
    import transformers

    model_args, data_args, training_args = parse_config(argument_classes, argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    if configure is not None:
        configure(model_args, data_args, training_args)
    transformers.set_seed(training_args.seed)
    start = time.perf_counter()
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args)
    check_before_work(training_args)
    return model_args, data_args, training_args, start


def begin_results(trainer: Any, data_args: RunDataArguments, available_splits: Sequence[str], *, task: str,
                  dataset_name: str, model_label: str, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    """Install the spectrum monitor (``--spectrum_every``) and start the results both jobs write.

    Returns ``(eval_split, prefix, results)``: the final split and its metric prefix
    (:func:`final_split_and_prefix`), and ``results`` with the task, the data, the split, the
    model's label and parameter count, then ``extra`` (task-specific keys).
    """
    data_args.install_spectrum_monitor(trainer)
    eval_split, prefix = final_split_and_prefix(data_args.final_split, list(available_splits))
    results = {"task": task, "dataset_name": dataset_name,
               "dataset_config_name": getattr(data_args, "dataset_config_name", None),
               "dataset_split": eval_split, **extra, "model": model_label,
               "n_parameters": sum(p.numel() for p in trainer.model.parameters())}
    return eval_split, prefix, results


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``argv`` (default ``sys.argv[1:]``) into the dataclasses.

    Either command-line flags, or one JSON config file optionally followed by flags that
    override it (``train.py config.json --learning_rate 1e-3``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(tuple(dataclass_types))
    empty_lists: set[str] = set()
    if argv and argv[0].endswith(".json"):
        config = json.loads(Path(argv[0]).read_text())
        known = {f for dt in dataclass_types for f in dt.__dataclass_fields__}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown keys in {argv[0]}: {unknown}")
        empty_lists = {k for k, v in config.items() if isinstance(v, (list, tuple)) and not v}
        argv = _dict_to_flags(config) + argv[1:]
    # a list flag given with no values (`--prune_fractions` alone) means the empty list, as `[]` in JSON
    argv, bare = _pop_bare_list_flags(parser, argv)
    empty_lists |= bare
    parsed = parser.parse_args_into_dataclasses(args=argv)
    for name in empty_lists:
        for obj in parsed:
            if name in getattr(type(obj), "__dataclass_fields__", {}):
                setattr(obj, name, [])
    return parsed


def _pop_bare_list_flags(parser: HfArgumentParser, argv: list[str]) -> tuple[list[str], set[str]]:
    """Remove list-valued flags that are followed by no value; return the rest and their names."""
    list_dests = {action.dest for action in parser._actions if action.nargs in ("+", "*")}
    kept: list[str] = []
    bare: set[str] = set()
    for i, token in enumerate(argv):
        name = token[2:] if token.startswith("--") else None
        if name in list_dests and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            bare.add(name)
            continue
        kept.append(token)
    return kept, bare


def _dict_to_flags(config: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if value:
                flags += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


#: ``--resume_from_checkpoint`` values that mean "the newest checkpoint in output_dir, if any".
RESUME_LATEST = ("last", "latest", "true", "auto")


def resolve_resume_checkpoint(training_args: Any) -> str | None:
    """The checkpoint folder to resume from, or ``None`` to start fresh.

    ``--resume_from_checkpoint PATH`` resumes from PATH (which must exist);
    ``--resume_from_checkpoint last`` (or ``latest``/``true``/``auto``) resumes from the newest
    ``checkpoint-*`` in ``output_dir`` and starts fresh when there is none, so the same command
    both starts a long run and continues it after an interruption.
    """
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "false")):
        return None
    if value is True or str(value).strip().lower() in RESUME_LATEST:
        out = Path(training_args.output_dir)
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        logger.info("resume_from_checkpoint=%s: %s", value, f"resuming from {last}" if last else
                    f"no checkpoint in {out}, starting fresh")
        return last
    if not Path(value).is_dir():
        raise ValueError(f"`resume_from_checkpoint` {value!r} is not a checkpoint folder (or use 'last' for the "
                         "newest checkpoint in output_dir).")
    return str(value)


def check_before_work(training_args: Any) -> None:
    """Checks that can fail a run before any data is read or anything is written.

    ``--push_to_hub``: a token must be available (``--hub_token``, ``HF_TOKEN`` or
    ``hf auth login``), the Hub must not be switched off (``HF_HUB_OFFLINE``) and must
    answer; otherwise the run stops now with what to do, instead of after training.
    """
    if not getattr(training_args, "push_to_hub", False):
        return
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ValueError("`push_to_hub` is set but the Hub is switched off (HF_HUB_OFFLINE=1): unset it, or drop "
                         "--push_to_hub and upload the output folder later with `hf upload REPO OUTPUT_DIR`.")
    token = training_args.hub_token or huggingface_hub.get_token()
    if not token:
        raise ValueError("`push_to_hub` needs a Hugging Face token with write access: run `hf auth login`, set "
                         "HF_TOKEN, or pass --hub_token; or drop --push_to_hub.")
    try:
        huggingface_hub.HfApi().whoami(token=token)
    except Exception as err:  # network errors, bad token: one line instead of a 100-line traceback later
        raise ValueError(f"`push_to_hub`: the Hub at {constants.ENDPOINT} did not accept the token or could not be "
                         f"reached ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Check the "
                         "connection and the token, or drop --push_to_hub and upload the output folder "
                         "later.") from None


@contextlib.contextmanager
def run_output_dir(training_args: Any) -> Iterator[None]:
    """Leave nothing half-written in ``output_dir`` when the run fails.

    On an exception (Ctrl-C included) the main process removes what the run added at the
    top level of ``output_dir``, except complete ``checkpoint-*`` folders (they let
    ``--resume_from_checkpoint last`` continue); the folder itself goes when the run
    created it and nothing is left. Entries that existed before the run are never touched.
    """
    out = Path(training_args.output_dir)
    existed = out.exists()
    before = {p.name for p in out.iterdir()} if existed else set()
    try:
        yield
    except BaseException:
        if getattr(training_args, "process_index", 0) == 0 and out.is_dir():
            for entry in out.iterdir():
                if entry.name in before or _is_complete_checkpoint(entry):
                    continue
                logger.warning("run failed: removing %s", entry)
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            if not existed and not any(out.iterdir()):
                out.rmdir()
        raise


def _is_complete_checkpoint(path: Path) -> bool:
    """A ``checkpoint-N`` folder the Trainer finished writing (its trainer_state.json is written last)."""
    return path.is_dir() and path.name.startswith("checkpoint-") and (path / "trainer_state.json").is_file()


def train_and_evaluate(trainer: Any, training_args: Any, *, has_validation: bool) -> dict[str, Any]:
    """Train (when ``do_train``), save, evaluate on validation; the metrics of both.

    With ``push_to_hub`` the model is not saved here: the script's final ``push_to_hub``
    saves it (``Trainer.save_model`` would push a first commit without results and card).
    """
    metrics: dict[str, Any] = {}
    if training_args.do_train:
        train_out = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if not training_args.push_to_hub:
            trainer.save_model()
        metrics.update(train_out.metrics)
    if has_validation:
        metrics.update(trainer.evaluate(metric_key_prefix="eval"))
    return metrics


def training_summary(trainer: Any, training_args: Any, **extra: Any) -> dict[str, Any]:
    """The recipe as results and cards show it (optimizer, schedule, batch, steps, seed, device) plus ``extra``."""
    return {
        "optimizer": _plain(training_args.optim), "optim_args": training_args.optim_args,
        "learning_rate": training_args.learning_rate, "lr_scheduler": _plain(training_args.lr_scheduler_type),
        "warmup_steps": training_args.warmup_steps, "weight_decay": training_args.weight_decay,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "world_size": training_args.world_size, "max_steps": trainer.state.max_steps,
        "epochs": round(float(trainer.state.epoch or 0), 3), "seed": training_args.seed,
        "device": str(training_args.device),
        **{k: getattr(training_args, k) for k in ("label_smoothing_factor", "max_tokens_per_batch")
           if getattr(training_args, k, None)},
        **extra,
    }


#: Per-evaluation keys that say how fast, not how well (left out of ``eval_history``).
_TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")


def evaluation_history(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations of a run in order, from the Trainer's ``state.log_history``.

    One entry per evaluation (periodic ``eval_strategy`` ones and the final ``evaluate()``):
    its ``step`` and ``epoch`` and every ``eval_*`` value except timings (loss, the task's
    metric, sparsity), so a results file shows whether validation had reached a plateau.
    """
    history = []
    for entry in log_history:
        values = {k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(_TIMING_SUFFIXES)}
        if values:
            history.append({"step": entry.get("step"), "epoch": entry.get("epoch"), **values})
    return history


def _plain(value: Any) -> str:
    """An enum's value (``OptimizerNames.ADAMW_TORCH_FUSED`` -> ``adamw_torch_fused``), else ``str``."""
    return str(getattr(value, "value", value))


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (a temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str))
    tmp.replace(path)
    return path


def sparsity_summary(model: torch.nn.Module, names: Sequence[str], thresholds: Sequence[float]) -> dict[str, Any]:
    """The sparsity report as results/cards read it.

    ``{"regularized": {"1e-03": frac, ...}, "all": {...}, "numel": {"regularized": n, "all": n},
    "per_layer": {param name: {"1e-03": frac, ...}}}`` (regularized parameters only in ``per_layer``).
    """
    from ...sparsity import sparsity_report

    report = sparsity_report(model, thresholds=tuple(thresholds), regularized_names=list(names)).to_dict()
    return {
        "regularized": report["regularized"]["fraction"],
        "all": report["all"]["fraction"],
        "numel": {"regularized": report["regularized"]["numel"], "all": report["all"]["numel"]},
        "per_layer": {name: layer["fraction"] for name, layer in report["layers"].items() if layer["regularized"]},
    }


def finish_run(
    trainer: Any,
    training_args: Any,
    results: dict[str, Any],
    *,
    start_time: float,
    metric_key: str,
    metric_name: str,
    evaluate_fn: Callable[[torch.nn.Module], float] | None,
    prune_fractions: Sequence[float] = PRUNE_FRACTIONS,
    recipe: dict[str, Any] | None = None,
    summary: Callable[[dict[str, Any]], str] | None = None,
    example_input: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The end both jobs share; returns the results.

    Adds the regularizer's hyperparameters and the recipe (:func:`training_summary` plus
    ``recipe``) to ``results``, measures sparsity and the prune curve (``evaluate_fn`` at each
    of ``prune_fractions``; none when either is empty), writes the plots, ``all_results.json``
    (with ``wall_time_s`` since ``start_time``) and, when ``metric_key`` is in the results, the
    model card; prints ``summary(results)`` on the main process; pushes to the Hub with
    ``push_to_hub``. Only the main process writes. With ``example_input`` (a model input of
    the run's shape) the sparsity is also given over the regularized weights that are not
    padding-only (``sparsity["live"]``, :mod:`hf_soft_diamond.padding_taps`), and so is the prune
    curve (``prune_curve_live``: fractions of the live weights, the padding-only taps zeroed at
    every level, which changes no output; the same curve when there are none).
    """
    from ...model_card import render_model_card
    from ...pruning import prune_curve, sparsity_at_max_loss
    from ..plots import plot_layer_sparsity, plot_prune_curves, plot_spectrum_history, plot_weight_histogram

    report = trainer.regularizer_report()
    regularized_names, hparams = report["regularized_names"], report["hparams"]
    is_main_process = trainer.is_world_process_zero()
    model = trainer.model
    output_dir = Path(training_args.output_dir)
    thresholds = training_args.sparsity_thresholds
    results = dict(results)
    results["training"] = training_summary(trainer, training_args, **(recipe or {}))
    history = evaluation_history(trainer.state.log_history)
    if history:
        results["eval_history"] = history
    results["regularizer"] = hparams
    sparsity = sparsity_summary(model, regularized_names, thresholds)
    results["sparsity"] = {"regularized": sparsity["regularized"], "all": sparsity["all"]}
    results["sparsity_numel"] = sparsity["numel"]
    params = dict(model.named_parameters())
    dead: dict[str, torch.Tensor] = {}
    if example_input is not None:
        from ...padding_taps import live_sparsity, padding_only_among

        dead = padding_only_among(model, example_input.to(next(model.parameters()).device), regularized_names)
        results["sparsity"]["live"], results["sparsity_numel"]["live"] = live_sparsity(
            [(n, params[n]) for n in regularized_names if n in params], dead, thresholds)
    if evaluate_fn is not None and prune_fractions:
        curve = prune_curve(model, evaluate_fn, fractions=tuple(prune_fractions),
                            regularized_names=list(regularized_names))
        results["prune_curve"] = [{"fraction": float(p["fraction"]), "metric": float(p["metric"])} for p in curve]
        results["sparsity_at_1pt_loss"] = sparsity_at_max_loss(curve, max_loss=1.0)
        if example_input is not None:  # the fractions of the live weights, padding-only taps zeroed
            live_curve = prune_curve(model, evaluate_fn, fractions=tuple(prune_fractions),
                                     regularized_names=list(regularized_names), excluded=dead) if dead else curve
            results["prune_curve_live"] = [{"fraction": float(p["fraction"]), "metric": float(p["metric"])}
                                           for p in live_curve]
    results["wall_time_s"] = time.perf_counter() - start_time
    if is_main_process:
        plots_dir = output_dir / "plots"
        weights = [params[n].detach() for n in regularized_names if n in params]
        plots = []
        if weights:
            plots.append(plot_weight_histogram(weights, plots_dir / "weight_histogram.png",
                                               regularizer=hparams.get("regularizer", "none"), hparams=hparams))
        taus = sorted(float(t) for t in thresholds)
        bar_tau = taus[len(taus) // 2] if taus else None  # the middle threshold (1e-3 of 1e-8, 1e-3, 1e-2)
        per_layer = {name: fractions[f"{bar_tau:.0e}"] for name, fractions in sparsity["per_layer"].items()
                     } if bar_tau is not None else {}
        if per_layer:
            plots.append(plot_layer_sparsity(per_layer, plots_dir / "layer_sparsity.png", tau=bar_tau))
        spectrum_file = output_dir / "spectrum_history.json"  # written by SpectrumCallback (--spectrum_every)
        if spectrum_file.is_file():
            history = json.loads(spectrum_file.read_text())
            if any(k.endswith("/alpha") for h in history for k in h):
                plots.append(plot_spectrum_history(history, plots_dir / "spectrum_alpha.png"))
        if results.get("prune_curve"):
            plots.append(plot_prune_curves({hparams.get("regularizer", "run"): results["prune_curve"]},
                                           plots_dir / "prune_curve.png", metric_name=metric_name))
        write_json(output_dir / "all_results.json", results)
        if metric_key in results:
            card = render_model_card(results, model_name=output_dir.resolve().name,
                                     plots=[str(Path(p).relative_to(output_dir)) for p in plots])
            card.save(output_dir / "README.md")
        if summary is not None:
            print(summary(results), flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="hf_soft_diamond run", blocking=True)
    return results


def summary_lines(results: dict[str, Any], *, metric_name: str, prune_note: str = "") -> list[str]:
    """The regularizer, sparsity and prune-curve lines of the summary printed at the end of a run."""
    reg = results.get("regularizer", {})
    name = reg.get("regularizer")
    described = f"{name} ({reg.get('reg_mode')}, strength {reg.get('reg_strength')})" if name != "none" else "none"
    sparsity = results.get("sparsity", {}).get("regularized", {})
    numel = results.get("sparsity_numel", {}).get("regularized")
    line = f"  regularizer {described}"
    if numel:
        line += f"; |w| <= tau among {numel:,} regularized weights: " + ", ".join(
            f"{tau}: {100 * frac:.1f}%" for tau, frac in sparsity.items())
    lines = [line]
    live, live_numel = results.get("sparsity", {}).get("live"), results.get("sparsity_numel", {}).get("live")
    if live and live_numel is not None and live_numel != numel:
        lines.append(f"  live (not padding-only) {live_numel:,} of them: "
                     + ", ".join(f"{tau}: {100 * frac:.1f}%" for tau, frac in live.items()))
    for key, what in (("prune_curve", "fraction pruned"), ("prune_curve_live", "fraction of the live weights pruned")):
        curve = results.get(key)
        if curve and (key == "prune_curve" or curve != results.get("prune_curve")):
            lines.append(f"  prune curve ({what}: {metric_name}{prune_note}): "
                         + "  ".join(f"{p['fraction']:.2f}: {p['metric']:.1f}" for p in curve))
    return lines


def framed(lines: Sequence[str], output_dir: str | Path, outputs: str) -> str:
    """``lines`` between rules, ending with where the outputs are."""
    return "\n".join(["", "=" * 78, *lines, f"  outputs: {Path(output_dir).resolve()} ({outputs})", "=" * 78])

