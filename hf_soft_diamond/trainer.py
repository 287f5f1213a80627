"""``Trainer`` / ``Seq2SeqTrainer`` with a weight prior: wiring only.

:class:`SoftDiamondTrainerMixin` overrides five public hooks of ``transformers.Trainer``
and nothing else:

* ``get_decay_parameter_names``: with a regularizer other than ``none``, the regularized
  parameters leave the optimizer's ``weight_decay`` group (the regularizer replaces the
  decay there; see :class:`~hf_soft_diamond.training_args.SoftDiamondArgumentsMixin`);
* ``create_optimizer``: after the Trainer built its optimizer, the regularizer built from
  the arguments is attached to the raw torch optimizer (before ``accelerate`` wraps it)
  with :func:`~hf_soft_diamond.attach_regularizer`. From then on it acts through
  optimizer step hooks, once per optimizer step, after gradient accumulation, all-reduce,
  unscaling and clipping, and its progress rides in ``optimizer.state_dict()`` (so
  checkpoints resume it). It never enters the loss: train and eval losses are the data
  loss, exactly as a plain Trainer computes them;
* ``get_optimizer_cls_and_kwargs``: with ``reg_fused_optimizer``, the optimizer is
  :class:`~hf_soft_diamond.optim.RegularizedAdamW` with the regularizer inside its update
  (no hooks; same updates, fewer passes over memory);
* ``log``: training logs (the ones with ``"loss"``) get ``reg_penalty`` (``strength * R(w)``
  of the regularized weights at that step) and ``sparsity/{reg,all}/le_<tau>``;
* ``evaluation_loop``: every evaluation/prediction gets ``<prefix>_sparsity/{reg,all}/le_<tau>``
  (``eval_sparsity/...`` for ``evaluate()``).

Sparsity conventions are those of :mod:`hf_soft_diamond.sparsity`: the fraction of
entries with ``|w| <= tau``, over the regularized weights (``reg``) and over all
parameters (``all``), measured on this process's copy of the weights.

Gradient accumulation. transformers 5.x passes ``num_items_in_batch`` to any model whose
``forward`` takes ``**kwargs`` and then trusts the returned loss to be a *sum over the
accumulated batch / num_items* (it skips dividing by the accumulation steps). Marian,
T5, BART, BERT, ViT... take ``**kwargs`` but compute a plain mean, so with plain
``Seq2SeqTrainer`` batch 4 x GA 2 moves the weights twice as far as batch 8 x GA 1.
The mixin sets ``model_accepts_loss_kwargs`` by :func:`model_consumes_num_items_in_batch`
(true only when the model demonstrably uses it), so the division happens whenever the
model does not normalise by ``num_items_in_batch`` itself. ``--model_accepts_loss_kwargs``
overrides the rule.

Not supported: DeepSpeed (its engine owns the optimizer step) and optimizers that do not
call ``torch.optim.Optimizer.step`` hooks.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

from .hooks import RegularizerHandle, attach_regularizer
from .optim import FusedRegularizerHandle, RegularizedAdamW
from .regularizers import Regularizer, select_parameters
from .training_args import SoftDiamondArgumentsMixin, SoftDiamondSeq2SeqTrainingArguments, SoftDiamondTrainingArguments

logger = logging.getLogger(__name__)


def _unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/FSDP-style ``.module`` wrappers and PEFT's ``get_base_model``."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        get_base = getattr(model, "get_base_model", None)
        if callable(get_base):
            base = get_base()
            if isinstance(base, nn.Module) and base is not model:
                model = base
    return model


def model_consumes_num_items_in_batch(model: nn.Module) -> bool:
    """Whether ``model``'s loss is normalised by the ``num_items_in_batch`` the Trainer passes.

    The rule (conservative: ``False`` whenever it cannot be shown to be ``True``):

    1. an explicit ``accepts_loss_kwargs`` attribute on the model (its authors' word) decides;
    2. ``forward`` must take ``num_items_in_batch`` (by name or through ``**kwargs``);
    3. ``forward``'s source names ``num_items_in_batch`` -> ``True``;
    4. ``forward``'s source calls ``self.loss_function`` -> ``True`` iff that loss function
       (``model.loss_function``, e.g. ``ForCausalLMLoss``) has a ``num_items_in_batch``
       parameter (``ForSequenceClassificationLoss`` swallows it in ``**kwargs``);
    5. anything else (e.g. ``CrossEntropyLoss()`` in Marian/T5/BART) -> ``False``.

    ``False`` is the safe answer: the Trainer then divides the model's mean loss by the
    accumulation steps (mean of micro-batch means, the pre-4.46 behaviour), whereas a wrong
    ``True`` scales the gradient by the number of accumulation steps.
    """
    model = _unwrap_model(model)
    explicit = getattr(model, "accepts_loss_kwargs", None)
    if isinstance(explicit, bool):
        return explicit
    forward = getattr(model, "forward", None)
    if forward is None:
        return False
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    if "num_items_in_batch" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return False
    try:
        source = inspect.getsource(inspect.unwrap(forward))
    except (OSError, TypeError):
        return False
    if re.search(r"\bnum_items_in_batch\b", source):
        return True
    if re.search(r"\bself\.loss_function\b", source):
        try:
            return "num_items_in_batch" in inspect.signature(model.loss_function).parameters
        except (AttributeError, TypeError, ValueError):
            return False
    return False


def _raw_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (and similar wrappers)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class _RegularizerEpochCallback(TrainerCallback):
    """Feeds ``state.epoch`` to regularizers that schedule by epoch (``set_epoch``, e.g. spectral decay)."""

    def __init__(self, trainer: SoftDiamondTrainerMixin) -> None:
        self._trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        handle = self._trainer.regularizer_handle
        set_epoch = getattr(handle.regularizer, "set_epoch", None) if handle is not None else None
        if callable(set_epoch):
            set_epoch(float(state.epoch or 0.0))
        return control


class SoftDiamondTrainerMixin:
    """The regularizer's wiring; put it in front of ``Trainer`` or ``Seq2SeqTrainer``.

    ``args`` should be the matching ``SoftDiamond*TrainingArguments``; anything else (a plain
    ``TrainingArguments``, ``None``) is converted to it field by field (the regularizer's fields
    take their values if present, else their defaults: ``regularizer="none"``).

    Attributes:
        regularizer_handle: the :class:`~hf_soft_diamond.RegularizerHandle` attached to the
            optimizer (``None`` until the optimizer exists, i.e. before ``train()``).

    The regularizer is built from the arguments once per optimizer (the first one when a
    report or penalty is asked for before training: that same object is then attached), and
    the regularized parameters are selected once per model.
    """

    _soft_diamond_args_class: type[SoftDiamondArgumentsMixin] = SoftDiamondTrainingArguments
    regularizer_handle: RegularizerHandle | FusedRegularizerHandle | None

    def __init__(self, model: nn.Module | None = None, args: Any = None, *pos: Any, **kwargs: Any) -> None:
        self.regularizer_handle = None
        self._unattached_regularizer: Regularizer | None = None  # built before an optimizer existed
        self._selection: tuple[int, list[tuple[str, nn.Parameter]]] | None = None  # (id(model), selection)
        super().__init__(model, self._soft_diamond_args(args), *pos, **kwargs)
        self._set_model_accepts_loss_kwargs()
        self.add_callback(_RegularizerEpochCallback(self))

    # ------------------------------------------------------------------ setup
    def _soft_diamond_args(self, args: Any) -> SoftDiamondArgumentsMixin:
        cls = self._soft_diamond_args_class
        if args is None:
            return cls(output_dir="trainer_output")
        wanted = [f.name for f in dataclasses.fields(cls) if f.init]
        if isinstance(args, SoftDiamondArgumentsMixin) and all(hasattr(args, name) for name in wanted):
            return args
        logger.info("hf_soft_diamond: converting %s to %s.", type(args).__name__, cls.__name__)
        return cls(**{name: getattr(args, name) for name in wanted if hasattr(args, name)})

    def _set_model_accepts_loss_kwargs(self) -> None:
        forced = self.args.model_accepts_loss_kwargs
        before = self.model_accepts_loss_kwargs
        if forced is not None:
            self.model_accepts_loss_kwargs = forced
        else:
            self.model_accepts_loss_kwargs = bool(before) and model_consumes_num_items_in_batch(self.model)
        if before and not self.model_accepts_loss_kwargs:
            logger.info(
                "hf_soft_diamond: %s.forward takes **kwargs but does not normalise its loss by num_items_in_batch; "
                "model_accepts_loss_kwargs=False so the Trainer divides the loss by the gradient accumulation steps.",
                type(_unwrap_model(self.model)).__name__)

    # ------------------------------------------------------------------ optimizer
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The Trainer's decayed names minus the regularized ones (when a regularizer is on)."""
        names = super().get_decay_parameter_names(model)
        if self.args.regularizer == "none":
            return names
        regularized = {n for n, _ in self._selected(model)}
        kept = [n for n in names if n not in regularized]
        if self.args.weight_decay > 0 and len(kept) < len(names):
            logger.info("hf_soft_diamond: weight_decay=%s is not applied to %d regularized parameter tensors "
                        "(regularizer %r); it still applies to %d other tensors.", self.args.weight_decay,
                        len(names) - len(kept), self.args.regularizer, len(kept))
        return kept

    def get_optimizer_cls_and_kwargs(self, args: Any, model: nn.Module | None = None) -> tuple[Any, dict[str, Any]]:
        """The Trainer's choice, or :class:`~hf_soft_diamond.optim.RegularizedAdamW` with
        ``reg_fused_optimizer`` (the regularizer built from the arguments inside it)."""
        if not getattr(args, "reg_fused_optimizer", False):
            return Trainer.get_optimizer_cls_and_kwargs(args, model)
        named = self._regularized_named(self.model if model is None else model)
        return RegularizedAdamW, {
            "lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
            "regularizer": self._regularizer_to_attach(), "regularized": named, "fused_backend": args.reg_fused_backend,
            "on_nonfinite": args.reg_on_nonfinite, "check_finite_every": args.reg_check_finite_every,
        }

    def _selected(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """``select_parameters`` of the arguments on ``model``, computed once per model."""
        if self._selection is None or self._selection[0] != id(model):
            self._selection = (id(model), select_parameters(model, **self.args.selection_kwargs()))
        return self._selection[1]

    def _regularizer_to_attach(self) -> Regularizer:
        """The regularizer for a new optimizer: the one built before training if any, else a fresh one."""
        regularizer, self._unattached_regularizer = self._unattached_regularizer, None
        return regularizer if regularizer is not None else self.args.build_regularizer()

    @property
    def regularizer(self) -> Regularizer:
        """The run's regularizer: the attached one, or (before training) the one that will be attached."""
        if self.regularizer_handle is not None:
            return self.regularizer_handle.regularizer
        if self._unattached_regularizer is None:
            self._unattached_regularizer = self.args.build_regularizer()
        return self._unattached_regularizer

    def _regularized_named(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        named = self._selected(model)
        if not named and self.args.regularizer != "none":
            raise ValueError("hf_soft_diamond: no parameter matches the selection (`reg_include`="
                             f"{self.args.reg_include!r}, `reg_exclude`={self.args.reg_exclude!r}); the regularizer "
                             f"{self.args.regularizer!r} would do nothing.")
        return named

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the regularizer attached to it (once per optimizer), or the
        fused :class:`~hf_soft_diamond.optim.RegularizedAdamW` holding it (``reg_fused_optimizer``)."""
        optimizer = super().create_optimizer(model)
        if optimizer is None:
            return optimizer
        raw = _raw_optimizer(optimizer)
        handle = self.regularizer_handle
        if handle is not None and handle.optimizer is raw:
            return optimizer
        if handle is not None:  # a new optimizer (e.g. a new train() with a fresh optimizer): move the wiring
            handle.remove()
        if isinstance(raw, RegularizedAdamW) and raw.regularizer is not None:
            self.regularizer_handle = raw.handle
            logger.info("hf_soft_diamond: %r fused into RegularizedAdamW on %d tensors.", raw.regularizer,
                        len(raw.named_regularized))
            return optimizer
        named = self._regularized_named(self.model if model is None else model)
        regularizer = self._regularizer_to_attach()
        self.regularizer_handle = attach_regularizer(raw, regularizer, named, on_nonfinite=self.args.reg_on_nonfinite,
                                                     check_finite_every=self.args.reg_check_finite_every)
        logger.info("hf_soft_diamond: %r on %d tensors (%d weights).", regularizer, len(named),
                    sum(p.numel() for _, p in named))
        return optimizer

    # ------------------------------------------------------------------ measurements
    def regularized_parameter_names(self) -> list[str]:
        """Names (in ``self.model``) of the parameters the regularizer acts on: the attached
        handle's (chosen once, when the optimizer was built), else the selection now."""
        if self.regularizer_handle is not None:
            return self.regularizer_handle.names
        return [n for n, _ in self._selected(self.model)]

    def regularizer_penalty(self) -> float:
        """``strength * R(w)`` of the regularized weights now (the handle's; before training, of the selection)."""
        if self.regularizer_handle is not None:
            return self.regularizer_handle.penalty()
        return float(self.regularizer.penalty([p for _, p in self._selected(self.model)]))

    def sparsity_metrics(self, prefix: str = "sparsity") -> dict[str, float]:
        """``{prefix}/reg/le_<tau>`` and ``{prefix}/all/le_<tau>`` at ``args.sparsity_thresholds`` ({} if none)."""
        if not self.args.sparsity_thresholds:
            return {}
        from .sparsity import sparsity_report

        report = sparsity_report(self.model, thresholds=tuple(self.args.sparsity_thresholds),
                                 regularized_names=self.regularized_parameter_names())
        return {k: v for k, v in report.to_flat_dict(prefix=prefix).items() if not k.endswith("/numel")}

    def regularizer_report(self) -> dict[str, Any]:
        """What scripts and model cards need to know about the regularizer now.

        Keys: ``hparams`` (``Regularizer.hparams()`` plus the selection fields that are set),
        ``regularized_names``, ``n_regularized_tensors``, ``n_regularized_weights``,
        ``penalty`` (``strength * R(w)``), ``optimizer_steps`` (steps the regularizer has
        acted on), ``weight_decay_on_regularized`` (the optimizer's decay on them: 0 when a
        regularizer is on, see the arguments), ``sparsity`` (flat ``sparsity/...`` fractions).
        """
        regularizer = self.regularizer
        if self.regularizer_handle is None:  # before training (or evaluation only): the mode its optimizer gives it
            regularizer.resolve_mode(self.args.optim if not self.args.reg_fused_optimizer else "adamw_torch")
        params = dict(self.model.named_parameters())
        named = [(n, params[n]) for n in self.regularized_parameter_names() if n in params]
        selection = {"reg_include": self.args.reg_include, "reg_exclude": self.args.reg_exclude,
                     "reg_include_embeddings": self.args.reg_include_embeddings}
        hparams = {**regularizer.hparams(), **{k: v for k, v in selection.items() if v is not None}}
        return {
            "hparams": hparams,
            "regularized_names": [n for n, _ in named],
            "n_regularized_tensors": len(named),
            "n_regularized_weights": sum(p.numel() for _, p in named),
            "penalty": self.regularizer_penalty(),
            "optimizer_steps": regularizer.step,
            "weight_decay_on_regularized": 0.0 if self.args.regularizer != "none" else float(self.args.weight_decay),
            "sparsity": self.sparsity_metrics("sparsity"),
        }

    # ------------------------------------------------------------------ hooks
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``reg_penalty`` and sparsity to training logs (those with ``"loss"``), then log."""
        if "loss" in logs and self.regularizer_handle is not None:
            logs["reg_penalty"] = self.regularizer_handle.penalty()
            logs.update(self.sparsity_metrics("sparsity"))
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"):
        """The Trainer's loop, plus ``{metric_key_prefix}_sparsity/...`` in its metrics."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        output.metrics.update(self.sparsity_metrics(f"{metric_key_prefix}_sparsity"))
        return output


    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        """Our card (:func:`~hf_soft_diamond.model_card.render_model_card`) when the run has results.

        ``Trainer.push_to_hub`` calls this before uploading ``output_dir``. The automatic
        transformers card has no task mapping for translation and drops its results, so
        when ``output_dir/all_results.json`` holds a task metric (the training scripts write
        it) the card is rendered from it, with the PNGs of ``output_dir/plots``; otherwise
        (e.g. a bare ``trainer.push_to_hub()`` before any evaluation) the Trainer's own card.
        """
        if not self.is_world_process_zero():
            return
        import json
        from pathlib import Path

        from .model_card import render_model_card

        out = Path(self.args.output_dir)
        results_path = out / "all_results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        try:
            card = render_model_card(
                results, model_name=model_name or (self.hub_model_id or out.resolve().name).split("/")[-1],
                plots=sorted(str(p.relative_to(out)) for p in (out / "plots").glob("*.png")))
        except ValueError:  # no task metric in the results: fall back to the Trainer's card
            super().create_model_card(model_name=model_name, **kwargs)
            return
        card.save(out / "README.md")


class SoftDiamondTrainer(SoftDiamondTrainerMixin, Trainer):
    """``transformers.Trainer`` with a weight prior; arguments: :class:`~hf_soft_diamond.SoftDiamondTrainingArguments`.

    Everything else is ``Trainer``'s: pass the same model, datasets, collator, callbacks.
    See :class:`SoftDiamondTrainerMixin` and the module docstring for what changes.
    """

    _soft_diamond_args_class = SoftDiamondTrainingArguments


class SoftDiamondSeq2SeqTrainer(SoftDiamondTrainerMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` with a weight prior; arguments:
    :class:`~hf_soft_diamond.SoftDiamondSeq2SeqTrainingArguments`.

    See :class:`SoftDiamondTrainerMixin` and the module docstring for what changes. With
    ``max_tokens_per_batch`` the training batches are token-based
    (:class:`~hf_soft_diamond.batching.TokenBudgetBatchSampler`, seeded by ``args.seed``
    and the epoch, so resuming replays the uninterrupted run's batches).
    """

    _soft_diamond_args_class = SoftDiamondSeq2SeqTrainingArguments

    def get_train_dataloader(self):
        """The Trainer's dataloader, or token-budget batches when ``max_tokens_per_batch`` is set."""
        budget = getattr(self.args, "max_tokens_per_batch", None)
        if budget is None:
            return super().get_train_dataloader()
        import datasets as hf_datasets
        from torch.utils.data import DataLoader

        from .batching import TokenBudgetBatchSampler, example_lengths

        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataset = self.train_dataset
        if not isinstance(dataset, hf_datasets.Dataset):
            raise ValueError("`max_tokens_per_batch` needs a `datasets.Dataset` with input_ids/labels columns.")
        sampler = TokenBudgetBatchSampler(example_lengths(dataset), budget,
                                          max_sentences=self.args.per_device_train_batch_size,
                                          seed=self.args.data_seed if self.args.data_seed is not None
                                          else self.args.seed)
        dataset = self._remove_unused_columns(dataset, description="Training")
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
                            persistent_workers=self.args.dataloader_persistent_workers)
        return self.accelerator.prepare(loader)


__all__ = [
    "SoftDiamondSeq2SeqTrainer",
    "SoftDiamondTrainer",
    "SoftDiamondTrainerMixin",
    "model_consumes_num_items_in_batch",
]
