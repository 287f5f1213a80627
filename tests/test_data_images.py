"""Image data: IDX reading, splits, Hub/imagefolder decoding, batched augmentations."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hf_soft_diamond.tasks.data import images as im
from hf_soft_diamond.tasks.data.images import (
    ImageCollator,
    ImageTensorDataset,
    ImageTransform,
    attach_transforms,
    carve_split,
    channel_stats,
    class_counts,
    load_fashion_mnist,
    load_hub_image_dataset,
    load_imagefolder,
    read_idx,
)

HAVE_FMNIST = (im.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fmnist() -> dict[str, ImageTensorDataset]:
    if not HAVE_FMNIST:
        pytest.skip("apt-get install dataset-fashion-mnist")
    return load_fashion_mnist()


# ------------------------------------------------------------------ IDX / Fashion-MNIST


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_validation(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", expected_ndim=3), arr)
    with pytest.raises(ValueError, match="dimension"):
        read_idx(tmp_path / "a.gz", expected_ndim=1)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\x00" * 8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as fh:  # header says 5 bytes, payload 3
        fh.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "short.gz")


def test_missing_files_error_names_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@needs_fmnist
def test_fashion_mnist_shapes_and_counts(fmnist: dict[str, ImageTensorDataset]) -> None:
    train, val, test = fmnist["train"], fmnist["validation"], fmnist["test"]
    assert train.images.shape == (55000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert val.images.shape == (5000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    full = np.array(class_counts(train)) + np.array(class_counts(val))
    assert full.tolist() == [6000] * 10
    assert class_counts(val) == [500] * 10
    assert class_counts(test) == [1000] * 10
    # independent reference: the raw gz payload, read with numpy only
    with gzip.open(im.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        raw = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    np.testing.assert_array_equal(test.images[:, 0].numpy(), raw)


@needs_fmnist
def test_validation_split_deterministic_and_disjoint(fmnist: dict[str, ImageTensorDataset]) -> None:
    again = load_fashion_mnist()
    assert torch.equal(again["validation"].images, fmnist["validation"].images)
    assert torch.equal(again["train"].labels, fmnist["train"].labels)
    labels = torch.from_numpy(read_idx(im.FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64))
    keep, carved = carve_split(labels, 5000)
    assert set(keep.tolist()).isdisjoint(carved.tolist())
    assert sorted(keep.tolist() + carved.tolist()) == list(range(60000))
    # the documented rule: the last 500 of each class in file order
    for c in range(10):
        where = torch.nonzero(labels == c).flatten()
        assert set(where[-500:].tolist()) <= set(carved.tolist())
        assert set(where[:-500].tolist()) <= set(keep.tolist())


def test_carve_split_remainder_and_errors() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    keep, carved = carve_split(labels, 4)  # 4 // 3 = 1 each, +1 for class 0
    assert carved.tolist() == [6, 7, 8, 9]
    assert keep.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="class 1"):
        carve_split(labels, 9)


def test_digits_if_sklearn() -> None:
    pytest.importorskip("sklearn")
    d = im.load_digits_dataset()
    assert d["train"].images.shape[1:] == (1, 8, 8)
    assert len(d["train"]) + len(d["validation"]) + len(d["test"]) == 1797
    assert int(d["train"].images.max()) == 255


# ------------------------------------------------------------------ Hub and imagefolder


def _pil(value: int, size: tuple[int, int] = (6, 4)):
    from PIL import Image

    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = value
    arr[..., 1] = (2 * value) % 256
    return Image.fromarray(arr)


def test_hub_path_with_patched_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {}
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})

    def fake_load_dataset(path, name=None, **kwargs):
        calls["args"] = (path, name, kwargs)
        train = datasets.Dataset.from_dict(
            {"img": [_pil(10 * i, (6 + i % 2, 4)) for i in range(12)], "label": [i % 3 for i in range(12)]},
            features=feats,
        )
        test = datasets.Dataset.from_dict({"img": [_pil(7)], "label": [2]}, features=feats)
        return datasets.DatasetDict({"train": train, "test": test})

    monkeypatch.setattr(im.datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(ValueError, match="image_size"):  # images of two widths
        load_hub_image_dataset("cifar10", validation_size=3)
    out = load_hub_image_dataset("cifar10", image_size=(4, 6), validation_size=3, cache_dir="/x")
    assert calls["args"] == ("cifar10", None, {"cache_dir": "/x"})
    assert set(out) == {"train", "validation", "test"}
    assert out["train"].images.shape == (9, 3, 4, 6) and out["validation"].images.shape == (3, 3, 4, 6)
    assert out["train"].class_names == ["a", "b", "c"]
    # carved validation: the last example of each class -> rows 9, 10, 11 (values 90, 100, 110)
    assert out["validation"].labels.tolist() == [0, 1, 2]
    assert out["validation"].images[:, 0, 0, 0].tolist() == [90, 100, 110]
    assert out["test"].images[0, :, 0, 0].tolist() == [7, 14, 0]
    gray = load_hub_image_dataset("cifar10", image_size=4, num_channels=1, validation_size=3)
    assert gray["test"].images.shape == (1, 1, 4, 4)


def test_hub_cifar100_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    feats = datasets.Features(
        {
            "img": datasets.Image(),
            "coarse_label": datasets.ClassLabel(names=["x", "y"]),
            "fine_label": datasets.ClassLabel(names=["p", "q", "r"]),
        }
    )

    def fake_load_dataset(path, name=None, **kwargs):
        assert path == "cifar100"
        d = {"img": [_pil(i) for i in range(6)], "coarse_label": [0, 1] * 3, "fine_label": [0, 1, 2] * 2}
        return datasets.DatasetDict(
            {split: datasets.Dataset.from_dict(d, features=feats) for split in ("train", "test")}
        )

    monkeypatch.setattr(im.datasets, "load_dataset", fake_load_dataset)
    out = load_hub_image_dataset("cifar100", validation_size=3)
    assert out["test"].labels.tolist() == [0, 1, 2, 0, 1, 2] and out["test"].num_classes == 3


def test_imagefolder(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("val", 2)):
        for c, value in (("cat", 30), ("dog", 200)):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                _pil(value + i, (5, 5)).save(tmp_path / split / c / f"{i}.png")
    out = load_imagefolder(tmp_path / "train", tmp_path / "val", image_size=5, cache_dir=str(tmp_path / "cache"))
    assert out["train"].class_names == ["cat", "dog"]
    assert len(out["validation"]) == 4 and class_counts(out["validation"]) == [2, 2]
    assert len(out["train"]) + len(out["test"]) == 8 and len(out["test"]) >= 1
    v = out["validation"]
    for x, y in zip(v.images, v.labels):
        assert int(x[0, 0, 0]) in ((30, 31) if y == 0 else (200, 201))
    with pytest.raises(FileNotFoundError):
        load_imagefolder(tmp_path / "nope")


# ------------------------------------------------------------------ transforms


def _batch(b: int = 5, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)  # no zeros


def test_identity_and_channels() -> None:
    x = _batch(c=1)
    y = ImageTransform()(x)
    assert y.dtype == torch.float32 and torch.equal(y, x.float() / 255)
    rgb = ImageTransform(num_channels=3)(x)
    assert rgb.shape == (5, 3, 8, 10) and all(torch.equal(rgb[:, i], y[:, 0]) for i in range(3))
    gray = ImageTransform(num_channels=1)(_batch())
    assert gray.shape == (5, 1, 8, 10)
    resized = ImageTransform(image_size=(16, 20))(torch.full((2, 1, 8, 10), 51, dtype=torch.uint8))
    assert resized.shape == (2, 1, 16, 20) and torch.allclose(resized, torch.full_like(resized, 0.2))


def test_flip_really_flips() -> None:
    x = _batch(b=64)
    y = ImageTransform(hflip=True)(x, generator=torch.Generator().manual_seed(1))
    ref = x.float() / 255
    flipped = [torch.equal(y[i], torch.flip(ref[i], dims=[-1])) for i in range(64)]
    same = [torch.equal(y[i], ref[i]) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 16 < sum(flipped) < 48  # about half
    # a known asymmetric image: column j goes to column W-1-j
    img = torch.arange(10, dtype=torch.uint8).view(1, 1, 1, 10).expand(40, 1, 2, 10)
    out = ImageTransform(hflip=True)(img, generator=torch.Generator().manual_seed(2))
    fwd = torch.arange(10, dtype=torch.float32) / 255
    firsts = {round(float(out[i, 0, 0, 0]) * 255) for i in range(40)}
    assert firsts == {0, 9}
    assert all(torch.equal(out[i, 0, 0], fwd if out[i, 0, 0, 0] == 0 else fwd.flip(0)) for i in range(40))


def test_cutout_zeroes_exactly_one_square() -> None:
    s = 3
    x = _batch(b=50)
    y = ImageTransform(cutout_size=s)(x, generator=torch.Generator().manual_seed(3))
    ref = x.float() / 255
    corners = set()
    for i in range(50):
        zero = (y[i] == 0).all(0)
        assert int((y[i] == 0).sum()) == 3 * s * s  # all channels, s*s pixels, nothing else
        rows = torch.nonzero(zero.any(1)).flatten()
        cols = torch.nonzero(zero.any(0)).flatten()
        assert rows.numel() == s and cols.numel() == s and int(rows[-1] - rows[0]) == s - 1
        assert int(cols[-1] - cols[0]) == s - 1
        assert torch.equal(y[i][:, ~zero], ref[i][:, ~zero])
        corners.add((int(rows[0]), int(cols[0])))
    assert len(corners) > 10  # positions vary
    with pytest.raises(ValueError, match="cutout_size"):
        ImageTransform(cutout_size=9)(x)


def test_crop_shifts_content() -> None:
    p = 2
    x = _batch(b=40, c=1, h=6, w=7)
    y = ImageTransform(crop_padding=p)(x, generator=torch.Generator().manual_seed(4))
    ref = torch.nn.functional.pad(x.float() / 255, (p, p, p, p))
    shifts = set()
    for i in range(40):
        match = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(y[i, 0], ref[i, 0, dy : dy + 6, dx : dx + 7])
        ]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 5  # offsets vary over the 25 possible


@needs_fmnist
def test_normalization_on_train(fmnist: dict[str, ImageTensorDataset]) -> None:
    mean, std = channel_stats(fmnist["train"].images)
    ref = fmnist["train"].images.double().numpy() / 255
    assert mean[0] == pytest.approx(ref.mean(), abs=1e-9) and std[0] == pytest.approx(ref.std(), abs=1e-9)
    splits = attach_transforms(fmnist, num_channels=3)
    x = splits["train"].pixel_batch(torch.arange(len(splits["train"])))
    assert x.shape == (55000, 3, 28, 28)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_dataset_items_collate_and_trainer_dataloader(tmp_path: Path) -> None:
    x = _batch(b=20, c=1, h=8, w=8)
    y = torch.arange(20) % 4
    ds = ImageTensorDataset(x, y, ["a", "b", "c", "d"])
    splits = attach_transforms({"train": ds, "validation": ds}, hflip=True, crop_padding=1, cutout_size=2)
    assert splits["train"].transform.is_random and not splits["validation"].transform.is_random
    item = splits["validation"][3]
    assert item["pixel_values"].shape == (1, 8, 8) and item["labels"].dtype == torch.int64
    from transformers import default_data_collator

    loader = torch.utils.data.DataLoader(splits["train"], batch_size=8, collate_fn=default_data_collator)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 1, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == y[:8].tolist()
    # the eval split is deterministic: two passes agree
    a = splits["validation"].pixel_batch(range(20))
    assert torch.equal(a, splits["validation"].pixel_batch(range(20)))
    # collate_fn alternative
    raw = ImageTensorDataset(x, y)
    col = ImageCollator(ImageTransform(mean=(0.5,), std=(0.25,)))
    b2 = col([raw[i] for i in range(4)])
    assert torch.allclose(b2["pixel_values"], (x[:4].float() / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match="uint8"):
        ImageTensorDataset(x.float(), y)


def test_trainer_uses_batched_items(tmp_path: Path) -> None:
    """transformers.Trainer's own dataloaders accept the dataset (train: random, eval: not)."""
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    x = _batch(b=24, c=1, h=8, w=8)
    ds = ImageTensorDataset(x, torch.arange(24) % 3)
    splits = attach_transforms({"train": ds, "validation": ds}, hflip=True, cutout_size=2, num_channels=3)
    cfg = ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, num_labels=3,
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
        max_steps=2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=ViTForImageClassification(cfg),
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 8, 8) and batch["labels"].dtype == torch.long
    trainer.train()
    assert np.isfinite(trainer.evaluate()["eval_loss"])
