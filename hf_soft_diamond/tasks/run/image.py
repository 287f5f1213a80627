"""Train an image classifier (ResNet or ViT) with a heavy-tailed weight prior.

In the style of transformers' ``examples/pytorch/image-classification/run_image_classification.py``:
three argument dataclasses (model, data, ``SoftDiamondTrainingArguments``) parsed from
flags or one JSON file, a ``SoftDiamondTrainer``, top-1 accuracy (in %), and at the end
the sparsity report, the prune curve, plots, ``all_results.json`` and a model card.

Data, one of:
  * ``--dataset_name fashion_mnist`` (default; Debian's ``dataset-fashion-mnist``, 28x28x1)
    or ``digits`` (scikit-learn's 8x8 digits, for smoke tests): offline;
  * ``--dataset_name cifar10 | cifar100 | caltech256`` or any Hub image-classification
    dataset, through ``datasets.load_dataset`` (needs internet; Caltech-256 is resized to
    100x100x3 as in the soft-diamond paper);
  * ``--train_dir/--validation_dir/--test_dir``: ``DIR/<class>/<image>`` folders.

Every split is decoded once into a uint8 tensor; augmentation (flip, padded random crop,
cutout, channel normalization: each a switch) runs batched on tensors, never per-image
PIL work. ``--recipe paper`` is the soft-diamond paper's recipe: SGD with Nesterov
momentum 0.9 and a piecewise-linear (triangular) learning rate, 0 -> peak at 20% of the
steps -> 0.

Runs unchanged under ``accelerate launch`` and ``torchrun``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import default_data_collator
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from ...padding_taps import warn_if_mostly_padding
from ...trainer import SoftDiamondTrainer
from ...training_args import SoftDiamondTrainingArguments
from ..data.images import (
    ImageTensorDataset,
    attach_transforms,
    class_counts,
    load_digits_dataset,
    load_fashion_mnist,
    load_hub_image_dataset,
    load_imagefolder,
)
from ..metrics import accuracy
from ..models import IMAGE_MODEL_SIZES, build_image_model, load_image_model
from . import common

logger = logging.getLogger(__name__)

OFFLINE_DATASETS = ("fashion_mnist", "digits")
RECIPES = ("default", "paper")


@dataclass
class ImageModelArguments:
    """Which classifier to train."""

    model_type: str = field(default="resnet", metadata={
        "help": f"Config-built architecture: {list(IMAGE_MODEL_SIZES)}."})
    model_size: str = field(default="small", metadata={
        "help": "Named size (resnet: tiny, small, resnet18; vit: tiny, small, base), see hf_soft_diamond.tasks.models"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Pretrained checkpoint (Hub id such as google/vit-base-patch16-224, or a local folder); its head is "
                "re-initialised when the label count differs. When unset, --model_type/--model_size from a config."})
    dropout: float = field(default=0.0, metadata={
        "help": "ViT: hidden and attention dropout; ResNet: dropout before the classifier. In [0, 1)."})
    batch_norm: bool = field(default=True, metadata={
        "help": "ResNet only: False replaces every BatchNorm2d by the identity (prior x batch-norm runs)."})
    image_size: int | None = field(default=None, metadata={
        "help": "Resize inputs to this side (pixels) in the batched transform; default: the data's own size "
                "(Caltech-256 is decoded at 100x100)."})
    num_channels: int | None = field(default=None, metadata={
        "help": "1 or 3; default: the data's channels for config-built models, the checkpoint's own "
                "(its config's num_channels, 3 when it has none) for pretrained ones. "
                "Gray images are repeated to 3 channels, colour images reduced to luma for 1."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})

    def __post_init__(self) -> None:
        if self.model_name_or_path is None:
            if self.model_type not in IMAGE_MODEL_SIZES:
                raise ValueError(f"`model_type` must be one of {list(IMAGE_MODEL_SIZES)}, got {self.model_type!r}.")
            if self.model_size not in IMAGE_MODEL_SIZES[self.model_type]:
                raise ValueError(f"`model_size` for {self.model_type} must be one of "
                                 f"{list(IMAGE_MODEL_SIZES[self.model_type])}, got {self.model_size!r}.")
            if self.model_type == "vit" and not self.batch_norm:
                raise ValueError("`batch_norm` False applies to `model_type` resnet only (ViT has no batch norm).")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}.")
        if self.num_channels not in (None, 1, 3):
            raise ValueError(f"`num_channels` must be 1 or 3, got {self.num_channels}.")
        if self.image_size is not None and self.image_size < 4:
            raise ValueError(f"`image_size` must be >= 4 pixels, got {self.image_size}.")


@dataclass
class ImageDataArguments(common.RunDataArguments):
    """Which images, which augmentation, which recipe."""

    dataset_name: str | None = field(default="fashion_mnist", metadata={
        "help": f"Offline ({', '.join(OFFLINE_DATASETS)}) or a Hub dataset (cifar10, cifar100, caltech256, or any "
                "Hub image-classification dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder DIR/<class>/<image> for training."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for validation."})
    test_dir: str | None = field(default=None, metadata={"help": "Image folder for test."})
    dataset_label: str | None = field(default=None, metadata={
        "help": "How results and the model card name image-folder data (default: the folder's name, or its "
                "parent's when the folder is a split such as DIR/train)."})
    validation_size: float = field(default=5000, metadata={
        "help": "When the data has no validation split: carve it from train (stratified, deterministic); an integer "
                "count or a fraction < 1. Fashion-MNIST: the last 500 of each class."})
    hflip: bool = field(default=False, metadata={"help": "Random horizontal flip (p = 0.5)."})
    crop_padding: int = field(default=0, metadata={
        "help": "Random crop after zero padding by this many pixels (0: off)."})
    cutout_size: int = field(default=0, metadata={"help": "Cutout: zero one square of this side per image (0: off)."})
    normalize: bool = field(default=True, metadata={"help": "Per-channel mean/std normalization (train statistics)."})
    recipe: str = field(default="default", metadata={
        "help": "default: the optimizer and schedule of the training arguments. paper: SGD, Nesterov momentum 0.9, "
                "piecewise-linear LR 0 -> learning_rate at 20%% of the steps -> 0 (warmup_steps and optim_args kept "
                "when given)."})
    prune_eval_samples: int = field(default=2000, metadata={
        "help": "Images of the final split evaluated at each prune fraction."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.dataset_name or self.train_dir):
            raise ValueError("give `dataset_name` (fashion_mnist, digits or a Hub dataset) or `train_dir`.")
        if self.recipe not in RECIPES:
            raise ValueError(f"`recipe` must be one of {RECIPES}, got {self.recipe!r}.")
        if self.crop_padding < 0 or self.cutout_size < 0:
            raise ValueError("`crop_padding` and `cutout_size` must be >= 0.")
        if self.validation_size < 0:
            raise ValueError(f"`validation_size` must be >= 0, got {self.validation_size}.")
        for name in ("train_dir", "validation_dir", "test_dir"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                raise ValueError(f"`{name}` {path!r} is not a directory.")
            if path is not None and not any(p.is_dir() for p in Path(path).iterdir()):
                raise ValueError(f"`{name}` {path!r} holds no class folders (expected DIR/<class>/<image>).")

    @property
    def data_label(self) -> str:
        """The data's name in results and cards: ``dataset_label``, the corpus name, or the image folder's
        name (its parent's when the folder is named after a split, e.g. ``cats_vs_dogs/train``)."""
        if self.dataset_label:
            return self.dataset_label
        if not self.train_dir:
            return str(self.dataset_name)
        folder = Path(self.train_dir).resolve()
        return folder.parent.name if folder.name.lower() in SPLIT_FOLDER_NAMES else folder.name


#: Folder names that name a split, not a dataset (``--train_dir DATA/train`` is called ``DATA``).
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "validation", "valid", "val", "dev", "test", "testing"})


def _size(value: float) -> int | float:
    return int(value) if value >= 1 else float(value)


def load_image_splits(data: ImageDataArguments, model_args: ImageModelArguments) -> dict[str, ImageTensorDataset]:
    """``{"train", "validation", "test"}`` uint8 tensor datasets chosen by the data arguments."""
    if data.train_dir:
        return load_imagefolder(data.train_dir, data.validation_dir, data.test_dir,
                                validation_size=_size(data.validation_size or 0.1), cache_dir=model_args.cache_dir)
    if data.dataset_name == "fashion_mnist":
        return load_fashion_mnist(validation_size=_size(data.validation_size))
    if data.dataset_name == "digits":
        return load_digits_dataset(validation_size=min(_size(data.validation_size), 180))
    return load_hub_image_dataset(data.dataset_name, data.dataset_config_name,
                                  validation_size=_size(data.validation_size), cache_dir=model_args.cache_dir)


def configure(model_args: ImageModelArguments, data_args: ImageDataArguments,
              training_args: SoftDiamondTrainingArguments) -> None:
    """The image job's settings on the parsed arguments: the recipe, and items kept whole."""
    apply_recipe(data_args.recipe, training_args)
    training_args.remove_unused_columns = False  # items are already {"pixel_values", "labels"}


def apply_recipe(recipe: str, training_args: SoftDiamondTrainingArguments) -> None:
    """Set the optimizer and schedule of ``recipe`` on the (already validated) training arguments."""
    if recipe != "paper":
        return
    training_args.optim = OptimizerNames.SGD
    training_args.optim_args = training_args.optim_args or "momentum=0.9,nesterov=True"
    training_args.lr_scheduler_type = SchedulerType.LINEAR
    if not training_args.warmup_steps:
        training_args.warmup_steps = 0.2  # a ratio of the total steps: the triangle's peak


def _truncate(ds: ImageTensorDataset, n: int | None) -> ImageTensorDataset:
    return ds if n is None or n >= len(ds) else ds.subset(range(n))


#: The argument dataclasses of this script, in parsing order.
ARGUMENT_CLASSES = (ImageModelArguments, ImageDataArguments, SoftDiamondTrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, training_args, start = common.start_run(ARGUMENT_CLASSES, argv, configure=configure)
    with common.run_output_dir(training_args):
        return _run(model_args, data_args, training_args, start)


def _run(model_args: ImageModelArguments, data_args: ImageDataArguments, training_args: SoftDiamondTrainingArguments,
         start: float) -> dict[str, Any]:
    with training_args.main_process_first(desc="decoding images"):
        splits = load_image_splits(data_args, model_args)
    splits = {
        "train": _truncate(splits["train"], data_args.max_train_samples),
        "validation": _truncate(splits["validation"], data_args.max_eval_samples),
        "test": _truncate(splits["test"], data_args.max_predict_samples),
    }
    splits = {k: v for k, v in splits.items() if len(v) > 0}
    train = splits["train"]
    data_channels, data_side = train.image_shape[0], train.image_shape[1]
    pretrained = model_args.model_name_or_path is not None
    id2label = dict(enumerate(train.class_names))
    if pretrained:  # first: its config says how many channels it reads
        model = load_image_model(model_args.model_name_or_path, num_labels=train.num_classes,
                                 id2label=id2label, label2id={v: k for k, v in id2label.items()},
                                 cache_dir=model_args.cache_dir)
    channels = model_args.num_channels or (getattr(model.config, "num_channels", 3) if pretrained else data_channels)
    side = model_args.image_size or data_side
    splits = attach_transforms(splits, hflip=data_args.hflip, crop_padding=data_args.crop_padding,
                               cutout_size=data_args.cutout_size, normalize=data_args.normalize,
                               num_channels=channels, image_size=model_args.image_size)
    logger.info("images: %s; train class counts %s", {k: len(v) for k, v in splits.items()}, class_counts(train))

    if not pretrained:
        model = build_image_model(model_args.model_type, model_args.model_size, num_labels=train.num_classes,
                                  image_size=side, num_channels=channels, dropout=model_args.dropout,
                                  batch_norm=model_args.batch_norm, id2label=id2label, seed=training_args.seed)

    warn_if_mostly_padding(model, torch.zeros(1, channels, side, side))

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return {"accuracy": 100.0 * accuracy(logits, eval_pred.label_ids)}

    trainer = SoftDiamondTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"] if training_args.do_train else None,
        eval_dataset=splits.get("validation"),
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
    )

    model_label = model_args.model_name_or_path or f"{model_args.model_type}-{model_args.model_size} (config-built)"
    eval_split, prefix, results = common.begin_results(
        trainer, data_args, list(splits), task="image-classification", dataset_name=data_args.data_label,
        model_label=model_label, image_shape=[channels, side, side], num_classes=train.num_classes)
    # the final evaluation below reads the validation split itself when tuning
    results.update(common.train_and_evaluate(trainer, training_args,
                                             has_validation="validation" in splits and eval_split != "validation"))
    results["train_images_per_second"] = results.get("train_samples_per_second")
    results.update(trainer.predict(splits[eval_split], metric_key_prefix=prefix).metrics)
    results[f"{prefix}_samples"] = len(splits[eval_split])

    prune_set = _truncate(splits[eval_split], data_args.prune_eval_samples)

    def accuracy_of(_: torch.nn.Module) -> float:
        return float(trainer.predict(prune_set, metric_key_prefix="prune").metrics["prune_accuracy"])

    return common.finish_run(
        trainer, training_args, results, start_time=start, metric_key=f"{prefix}_accuracy",
        metric_name="accuracy (%)", evaluate_fn=accuracy_of, prune_fractions=data_args.prune_fractions,
        recipe={"recipe": data_args.recipe, "dropout": model_args.dropout, "batch_norm": model_args.batch_norm,
                "augmentation": {"hflip": data_args.hflip, "crop_padding": data_args.crop_padding,
                                 "cutout_size": data_args.cutout_size, "normalize": data_args.normalize}},
        summary=lambda r: image_summary(r, prefix, training_args.output_dir),
        example_input=torch.zeros(1, channels, side, side))


def image_summary(results: dict[str, Any], prefix: str, output_dir: str) -> str:
    """The lines a person reads at the end of a run: accuracy, sparsity, prune curve, outputs."""
    head = (f"{results.get('dataset_name')} {results.get('dataset_split', prefix)} "
            f"({results.get(f'{prefix}_samples', '?')} images): accuracy {results[f'{prefix}_accuracy']:.2f}%")
    return common.framed([head, *common.summary_lines(results, metric_name="accuracy %")], output_dir,
                  "model, README.md card, all_results.json, plots/")


if __name__ == "__main__":
    main()
