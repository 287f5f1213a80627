"""Training throughput (images/s) of the image path, with and without each regularizer.

Measured side by side in one process on the same data pipeline (Fashion-MNIST decoded
once into a uint8 tensor, batched augmentation: flip + padded crop, normalization) and
the same model: ``SoftDiamondTrainer.train()`` for ``--steps`` steps after ``--warmup``
untimed steps (compilation of the fused kernels happens there), repeated ``--repeats``
times, arms interleaved; the median is reported with its ratio to the unregularized run.
A second table times the data pipeline alone (decode + augment + collate per batch).

    python benchmarks/bench_image_throughput.py --model resnet:small --batch 128 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback, default_data_collator

from hf_soft_diamond import SoftDiamondTrainer, SoftDiamondTrainingArguments
from hf_soft_diamond.tasks.data.images import attach_transforms, load_fashion_mnist
from hf_soft_diamond.tasks.models import build_image_model

ARMS = {
    "none": {"regularizer": "none"},
    "l2 (decoupled)": {"regularizer": "l2", "reg_mode": "decoupled", "reg_strength": 5e-4},
    "l1": {"regularizer": "l1", "reg_strength": 5e-5},
    "sas a=1.5": {"regularizer": "sas", "reg_strength": 5e-4, "sas_alpha": 1.5, "sas_gamma": 0.5},
    "pwd p=1": {"regularizer": "pwd", "reg_strength": 5e-4, "lp_p": 1.0},
    "stable_rank": {"regularizer": "stable_rank", "reg_strength": 1e-3},
}


class _StepTimer(TrainerCallback):
    """Wall time of optimizer steps after the first ``warmup`` ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def images_per_second(splits, arch: str, size: str, arm: dict, batch: int, steps: int, warmup: int) -> float:
    model = build_image_model(arch, size, num_labels=10, image_size=28, num_channels=1, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        args = SoftDiamondTrainingArguments(
            output_dir=tmp, max_steps=warmup + steps, per_device_train_batch_size=batch, learning_rate=0.05,
            optim="sgd", save_strategy="no", report_to="none", logging_strategy="no", use_cpu=True,
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, **arm)
        timer = _StepTimer(warmup)
        trainer = SoftDiamondTrainer(model=model, args=args, train_dataset=splits["train"],
                                     data_collator=default_data_collator, callbacks=[timer])
        trainer.train()
    return steps * batch / (timer.end - timer.start)


def pipeline_images_per_second(dataset, batch: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=default_data_collator)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet:small", help="arch:size, e.g. resnet:small or vit:small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    opts = ap.parse_args()
    arch, size = opts.model.split(":")
    splits = attach_transforms(load_fashion_mnist(), hflip=True, crop_padding=2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {arch}/{size}, batch {opts.batch}")
    print(f"data pipeline alone: {pipeline_images_per_second(splits['train'], opts.batch, 50):,.0f} images/s")
    runs: dict[str, list[float]] = {name: [] for name in opts.arms}
    for _ in range(opts.repeats):
        for name in opts.arms:
            runs[name].append(images_per_second(splits, arch, size, ARMS[name], opts.batch, opts.steps, opts.warmup))
    base = statistics.median(runs["none"]) if "none" in runs else None
    print("| regularizer | images/s (median) | vs none |")
    print("|---|---|---|")
    for name, values in runs.items():
        med = statistics.median(values)
        ratio = f"{med / base:.3f}" if base else "n/a"
        print(f"| {name} | {med:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
