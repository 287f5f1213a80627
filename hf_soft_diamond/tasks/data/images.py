"""Image-classification data as uint8 tensors, with batched tensor augmentations.

Design
------
Every loader decodes its images **once** into an :class:`ImageTensorDataset`: ``images``
is a ``uint8`` tensor of shape ``(N, C, H, W)`` (values 0..255) and ``labels`` an ``int64``
tensor of shape ``(N,)`` with values in ``0..num_classes-1``. Loaders return a plain dict
``{"train": ..., "validation": ..., "test": ...}``.

Items are ``{"pixel_values": float32 (C, H, W), "labels": int64 scalar}``, the input of
``transformers`` image classifiers (ViT, ResNet, ...). Augmentation is *batched*: the
dataset implements ``__getitems__(indices)``, which ``torch.utils.data.DataLoader`` calls
with the whole list of a batch's indices, so an :class:`ImageTransform` runs once per
batch on a ``(B, C, H, W)`` tensor (no PIL, no per-image Python work); the default
collator (``transformers.default_data_collator`` or torch's ``default_collate``) then
stacks the items back. The transform is attached to the *dataset*, not to the collator,
because ``transformers.Trainer`` uses one ``data_collator`` for training and evaluation:
the train split carries the random augmentation, the eval splits the deterministic part.
(For a custom loop, :class:`ImageCollator` applies a transform in ``collate_fn`` instead.)

Pixel units: a transform first maps uint8 to float in ``[0, 1]`` (``x / 255``); channel
``mean``/``std`` are in these ``[0, 1]`` units (as torchvision's ``Normalize``).

Validation split (fixed, deterministic, no random numbers, stable across versions):
:func:`carve_split` takes, for each class, the **last** ``size // K`` examples of that
class in file order (``K`` classes), plus one more from each of the classes
``0 .. size % K - 1``; the rest stays, in file order. Fashion-MNIST: 5,000 validation
images (the last 500 of each class of ``train``), 55,000 train; test is ``t10k``.

Sources
-------
- Fashion-MNIST (offline): Debian package ``dataset-fashion-mnist`` (MIT), IDX files in
  :data:`FASHION_MNIST_DIR`; :func:`load_fashion_mnist`. 28x28x1, 10 classes.
- scikit-learn's ``load_digits`` (1,797 8x8x1 images, values 0..16 scaled to 0..255):
  :func:`load_digits_dataset`, for the fastest smoke tests.
- The Hub (internet): :func:`load_hub_image_dataset` (``cifar10``, ``cifar100``,
  ``caltech256`` aliases in :data:`HUB_IMAGE_DATASETS`, or any Hub name).
- Local folders ``DIR/<class name>/<image>``: :func:`load_imagefolder`.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the IDX files."""

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

HUB_IMAGE_DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"path": "cifar10", "image_column": "img", "label_column": "label"},
    "cifar100": {"path": "cifar100", "image_column": "img", "label_column": "fine_label"},
    # parquet with train/validation/test splits; images of varying size, resized as in
    # the paper's Caltech-256 setting (100x100x3)
    "caltech256": {"path": "ilee0022/Caltech-256", "image_size": (100, 100)},
}
"""Aliases of :func:`load_hub_image_dataset`: Hub ``path`` and column names (``None`` or
absent: detected from the features, the first ``Image`` and first ``ClassLabel`` column)."""

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MISSING_HINT = (
    "Install the Debian package with `apt-get install dataset-fashion-mnist`, pass the "
    "directory holding the IDX files, or use a Hub dataset (--dataset_name) instead."
)


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Validates the magic number (two zero bytes, a known type code, the number of
    dimensions), ``expected_ndim`` when given, and that the payload has exactly
    ``prod(dims)`` elements.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4].hex()!r})")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: expected an IDX file with {expected_ndim} dimension(s), found {ndim}")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says {dims} ({expected} bytes) but the payload has {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


# --------------------------------------------------------------------------- dataset


class ImageTensorDataset(torch.utils.data.Dataset):
    """Images held as one uint8 tensor, items for ``transformers.Trainer``.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        labels: integer tensor ``(N,)`` (stored as ``int64``).
        class_names: one name per class (default ``"0", "1", ...``).
        transform: an :class:`ImageTransform` applied per batch (``None``: only ``x / 255``).

    Items are ``{"pixel_values": float32 (C', H', W'), "labels": int64 scalar}``;
    ``__getitems__`` (used by ``DataLoader``) transforms a whole batch at once.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: Sequence[str] | None = None,
        transform: ImageTransform | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"`images` must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        labels = torch.as_tensor(labels).to(torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"`labels` must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        n_cls = int(labels.max()) + 1 if labels.numel() else 0
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(n_cls)]
        if n_cls > len(self.class_names) or (labels.numel() and int(labels.min()) < 0):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got [{int(labels.min())}, {n_cls - 1}]")
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the stored images (before any transform)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.images.shape[0]

    def with_transform(self, transform: ImageTransform | None) -> ImageTensorDataset:
        """A dataset sharing the same tensors with another transform."""
        return ImageTensorDataset(self.images, self.labels, self.class_names, transform)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageTensorDataset:
        """A dataset of the given rows (copied), same class names and transform."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.class_names, self.transform)

    def pixel_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Transformed ``pixel_values`` of the given rows, ``(B, C', H', W')`` float32."""
        x = self.images[torch.as_tensor(indices, dtype=torch.long)]
        return self.transform(x) if self.transform is not None else x.float().div_(255)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        pixels = self.pixel_batch(idx)
        labels = self.labels[idx]
        return [{"pixel_values": p, "labels": y} for p, y in zip(pixels.unbind(0), labels.unbind(0))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __repr__(self) -> str:
        return (
            f"ImageTensorDataset(num_rows={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}, transform={self.transform})"
        )


def carve_split(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split: ``(kept indices, carved indices)``, both ascending.

    The carved part holds the **last** ``size // K`` examples of each class (file order),
    plus one more (its last remaining one) from each class ``0 .. size % K - 1``; ``K`` is
    the number of distinct labels. Raises ``ValueError`` when a class is too small.
    """
    labels = torch.as_tensor(labels)
    if size < 0 or size > labels.numel():
        raise ValueError(f"split size must be in [0, {labels.numel()}], got {size}")
    classes = torch.unique(labels).tolist()
    k = len(classes)
    carved = []
    for rank, c in enumerate(classes):
        take = size // k + (1 if rank < size % k else 0)
        where = torch.nonzero(labels == c).flatten()
        if take >= where.numel() and take > 0:
            raise ValueError(f"class {c} has {where.numel()} examples, cannot carve {take} and keep some")
        if take:
            carved.append(where[-take:])
    carved_idx = torch.sort(torch.cat(carved)).values if carved else torch.empty(0, dtype=torch.long)
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[carved_idx] = False
    return torch.nonzero(keep).flatten(), carved_idx


def _resolve_size(size: int | float, n: int, arg: str) -> int:
    if isinstance(size, float) and 0 < size < 1:
        return int(round(size * n))
    if isinstance(size, (int, np.integer)) and size >= 0:
        return int(size)
    raise ValueError(f"`{arg}` must be an int >= 0 (a count) or a float in (0, 1) (a fraction), got {size!r}")


def _split_off(ds: ImageTensorDataset, size: int) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    keep, carved = carve_split(ds.labels, size)
    return ds.subset(keep), ds.subset(carved)


# --------------------------------------------------------------------------- offline sources


def load_fashion_mnist(
    root: str | Path | None = None,
    validation_size: int | float = 5000,
) -> dict[str, ImageTensorDataset]:
    """Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist``.

    Returns ``{"train", "validation", "test"}``: images ``uint8 (N, 1, 28, 28)``; train
    and validation are carved from the 60,000 ``train`` images by :func:`carve_split`
    (default 55,000 / 5,000: the last 500 of each class), test is ``t10k`` (10,000).
    ``validation_size=0`` gives an empty validation split. Decoding time: ``benchmarks/RESULTS.md``,
    "Timings moved out of docstrings".
    """
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    out: dict[str, ImageTensorDataset] = {}
    for split, (img_file, lbl_file) in FASHION_MNIST_FILES.items():
        img_path, lbl_path = root / img_file, root / lbl_file
        for p in (img_path, lbl_path):
            if not p.is_file():
                raise FileNotFoundError(f"Fashion-MNIST file {p} not found. {_MISSING_HINT}")
        images = read_idx(img_path, expected_ndim=3)
        labels = read_idx(lbl_path, expected_ndim=1)
        if images.dtype != np.uint8 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{img_path}: expected uint8 images and one label each, got {images.dtype} "
                f"{images.shape} and {labels.shape[0]} labels"
            )
        out[split] = ImageTensorDataset(
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            FASHION_MNIST_CLASSES,
        )
    n_val = _resolve_size(validation_size, len(out["train"]), "validation_size")
    train, val = _split_off(out["train"], n_val)
    return {"train": train, "validation": val, "test": out["test"]}


def load_digits_dataset(
    validation_size: int | float = 180,
    test_size: int | float = 360,
) -> dict[str, ImageTensorDataset]:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes) as ``uint8 (N, 1, 8, 8)``.

    Values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``). Test is carved first,
    then validation, both by :func:`carve_split`. Needs ``scikit-learn``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits_dataset needs scikit-learn (`pip install scikit-learn`)") from err
    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    full = ImageTensorDataset(images, torch.from_numpy(bunch.target.astype(np.int64)), [str(i) for i in range(10)])
    rest, test = _split_off(full, _resolve_size(test_size, len(full), "test_size"))
    train, val = _split_off(rest, _resolve_size(validation_size, len(rest), "validation_size"))
    return {"train": train, "validation": val, "test": test}


# --------------------------------------------------------------------------- datasets-library sources


def _size_hw(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _detect_columns(
    features: Mapping[str, Any], image_column: str | None, label_column: str | None
) -> tuple[str, str]:
    if image_column is None:
        image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if label_column is None:
        label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_column is None and "label" in features:
            label_column = "label"
    for arg, col in (("image_column", image_column), ("label_column", label_column)):
        if col is None or col not in features:
            raise ValueError(f"cannot find the {arg[:-7]} column ({arg}={col!r}); columns: {list(features)}")
    return image_column, label_column  # type: ignore[return-value]


def _decode_split(
    ds: datasets.Dataset,
    image_column: str,
    label_column: str,
    image_size: tuple[int, int] | None,
    num_channels: int,
    label_map: Mapping[Any, int] | None,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode PIL images once into ``uint8 (N, C, H, W)`` (PIL bilinear resize when sized)."""
    from PIL import Image as PILImage

    mode = {1: "L", 3: "RGB"}[num_channels]
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for batch in ds.select_columns([image_column, label_column]).iter(batch_size=batch_size):
        for img, y in zip(batch[image_column], batch[label_column]):
            if not isinstance(img, PILImage.Image):
                raise TypeError(f"column {image_column!r} must hold images, got {type(img).__name__}")
            img = img.convert(mode)
            if image_size is not None and img.size != (image_size[1], image_size[0]):
                img = img.resize((image_size[1], image_size[0]), PILImage.Resampling.BILINEAR)
            arrays.append(np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], num_channels))
            labels.append(label_map[y] if label_map is not None else int(y))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:3]}...; pass `image_size` to resize them")
    if not arrays:
        empty = torch.empty(0, num_channels, *(image_size or (0, 0)), dtype=torch.uint8)
        return empty, torch.empty(0, dtype=torch.long)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


_VALIDATION_NAMES = ("validation", "valid", "val", "dev")


def _from_dataset_dict(
    dd: Mapping[str, datasets.Dataset],
    image_column: str | None,
    label_column: str | None,
    image_size: int | Sequence[int] | None,
    num_channels: int,
    validation_size: int | float,
    test_size: int | float | None,
) -> dict[str, ImageTensorDataset]:
    if "train" not in dd:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(dd)})")
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels}")
    features = dd["train"].features
    img_col, lbl_col = _detect_columns(features, image_column, label_column)
    feat = features[lbl_col]
    label_map = None
    if isinstance(feat, datasets.ClassLabel):
        class_names = list(feat.names)
    else:  # plain values: names are the sorted distinct values over all splits
        values = sorted({v for split in dd.values() for v in split[lbl_col]})
        class_names = [str(v) for v in values]
        label_map = {v: i for i, v in enumerate(values)}
    size = _size_hw(image_size)
    out: dict[str, ImageTensorDataset] = {}
    names = {"train": "train", "test": "test" if "test" in dd else None}
    names["validation"] = next((v for v in _VALIDATION_NAMES if v in dd), None)
    for split, src in names.items():
        if src is not None:
            x, y = _decode_split(dd[src], img_col, lbl_col, size, num_channels, label_map)
            out[split] = ImageTensorDataset(x, y, class_names)
    if "test" not in out:
        n = _resolve_size(validation_size if test_size is None else test_size, len(out["train"]), "test_size")
        out["train"], out["test"] = _split_off(out["train"], n)
    if "validation" not in out:
        n = _resolve_size(validation_size, len(out["train"]), "validation_size")
        out["train"], out["validation"] = _split_off(out["train"], n)
    return {k: out[k] for k in ("train", "validation", "test")}


def load_hub_image_dataset(
    name: str,
    config_name: str | None = None,
    image_size: int | Sequence[int] | None = None,
    num_channels: int = 3,
    validation_size: int | float = 5000,
    test_size: int | float | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
    **load_kwargs: Any,
) -> dict[str, ImageTensorDataset]:
    """Load an image-classification dataset from the Hub and decode it to tensors once.

    Args:
        name: an alias of :data:`HUB_IMAGE_DATASETS` (``cifar10``: columns ``img``/
            ``label``; ``cifar100``: ``img``/``fine_label``; ``caltech256``: resized to
            100x100) or any Hub name (columns detected: first ``Image``, first ``ClassLabel``).
        config_name: the dataset configuration, if any.
        image_size: ``H`` or ``(H, W)`` to resize to at decode time (PIL bilinear);
            required when the images differ in size. Default: the alias's, else none.
        num_channels: 3 (``RGB``) or 1 (``L``, grayscale).
        validation_size: when the dataset has no validation split (``validation``,
            ``valid``, ``val``, ``dev``), carve it from train by :func:`carve_split` (an
            int count or a float fraction of train).
        test_size: when there is no ``test`` split, carve it from train first (default:
            ``validation_size``).
        image_column / label_column: override the column names.
        cache_dir, load_kwargs: passed to :func:`datasets.load_dataset`.

    Returns:
        ``{"train", "validation", "test"}`` :class:`ImageTensorDataset`.
    """
    spec = dict(HUB_IMAGE_DATASETS.get(name, {"path": name}))
    dd = datasets.load_dataset(spec["path"], config_name, cache_dir=cache_dir, **load_kwargs)
    return _from_dataset_dict(
        dd,
        image_column if image_column is not None else spec.get("image_column"),
        label_column if label_column is not None else spec.get("label_column"),
        image_size if image_size is not None else spec.get("image_size"),
        num_channels,
        validation_size,
        test_size,
    )


def load_imagefolder(
    train_dir: str | Path,
    validation_dir: str | Path | None = None,
    test_dir: str | Path | None = None,
    image_size: int | Sequence[int] | None = None,
    num_channels: int = 3,
    validation_size: int | float = 0.1,
    test_size: int | float | None = None,
    cache_dir: str | None = None,
) -> dict[str, ImageTensorDataset]:
    """Images in ``DIR/<class name>/<file>`` folders (``--train_dir/--validation_dir``).

    Read with ``datasets``' ``imagefolder`` builder in one call, so all splits share one
    label set (class names sorted alphabetically, from the folder names). Missing
    validation/test splits are carved from train as in :func:`load_hub_image_dataset`
    (here ``validation_size`` defaults to 10% of train).
    """
    data_files = {"train": f"{Path(train_dir)}/**"}
    if validation_dir is not None:
        data_files["validation"] = f"{Path(validation_dir)}/**"
    if test_dir is not None:
        data_files["test"] = f"{Path(test_dir)}/**"
    for split, pattern in data_files.items():
        if not Path(pattern[:-3]).is_dir():
            raise FileNotFoundError(f"{split} directory {pattern[:-3]} does not exist")
    dd = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    return _from_dataset_dict(dd, "image", "label", image_size, num_channels, validation_size, test_size)


# --------------------------------------------------------------------------- transforms


@torch.no_grad()
def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``uint8 (N, C, H, W)`` images, in [0, 1] units."""
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, C, H, W), got {tuple(images.shape)}")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255)
        s += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


@dataclass
class ImageTransform:
    """Batched tensor transform: uint8 or [0, 1] float ``(B, C, H, W)`` -> float32.

    Steps, in order (each off by default):

    1. ``x / 255`` for uint8 input (float input is taken to be in [0, 1] already);
    2. ``num_channels``: 1 -> 3 repeats the gray channel; 3 -> 1 takes BT.601 luma;
    3. ``image_size``: ``H`` or ``(H, W)``, bilinear resize with antialiasing;
    4. ``crop_padding`` (pixels, random): zero-pad each side by ``p`` (black) and take a
       random window of the original size, offsets uniform in ``0..2p`` per image;
    5. ``hflip`` (random): mirror each image left-right with probability 0.5;
    6. ``mean``/``std`` (per channel, [0, 1] units, length C or 1): ``(x - mean) / std``;
    7. ``cutout_size`` (pixels, random): set one ``s x s`` square per image, lying fully
       inside the image with its top-left corner uniform, to zero in *all* channels.
       Applied after normalization (as DeVries & Taylor, 2017), so the square holds the
       channel mean; unlike their code the square is never clipped at the border.

    Random draws use ``generator`` when given (else torch's global RNG), on the input's
    device. :meth:`deterministic` gives the evaluation counterpart (steps 1-3 and 6).
    """

    hflip: bool = False
    crop_padding: int = 0
    cutout_size: int = 0
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    num_channels: int | None = None
    image_size: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout_size < 0:
            raise ValueError("`crop_padding` and `cutout_size` must be >= 0")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both `mean` and `std`, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"`std` must be positive, got {self.std}")
        if self.num_channels not in (None, 1, 3):
            raise ValueError(f"`num_channels` must be 1, 3 or None, got {self.num_channels}")

    @property
    def is_random(self) -> bool:
        return self.hflip or self.crop_padding > 0 or self.cutout_size > 0

    def deterministic(self) -> ImageTransform:
        """The same transform without the random steps (for evaluation)."""
        return replace(self, hflip=False, crop_padding=0, cutout_size=0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        b, c, h, w = x.shape
        dev = x.device
        if self.num_channels is not None and self.num_channels != c:
            if c == 1 and self.num_channels == 3:
                x = x.expand(b, 3, h, w)
            elif c == 3 and self.num_channels == 1:
                x = (x * torch.tensor(_LUMA, device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise ValueError(f"cannot convert {c} channels to {self.num_channels}")
            c = self.num_channels
        size = _size_hw(self.image_size)
        if size is not None and size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            h, w = size
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
            bi = torch.arange(b, device=dev)[:, None, None, None]
            ci = torch.arange(c, device=dev)[None, :, None, None]
            x = padded[bi, ci, rows, cols]
        if self.hflip:
            flip = torch.rand(b, generator=generator, device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.mean is not None:
            mean = torch.tensor(list(self.mean), dtype=x.dtype, device=dev)
            std = torch.tensor(list(self.std), dtype=x.dtype, device=dev)  # type: ignore[arg-type]
            if mean.numel() not in (1, c) or std.numel() not in (1, c):
                raise ValueError(f"`mean`/`std` need 1 or {c} values, got {mean.numel()}/{std.numel()}")
            x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        if self.cutout_size > 0:
            s = self.cutout_size
            if s > min(h, w):
                raise ValueError(f"`cutout_size` {s} exceeds the image size {h}x{w}")
            y0 = torch.randint(0, h - s + 1, (b,), generator=generator, device=dev)
            x0 = torch.randint(0, w - s + 1, (b,), generator=generator, device=dev)
            r = torch.arange(h, device=dev)[None, :]
            q = torch.arange(w, device=dev)[None, :]
            in_rows = (r >= y0[:, None]) & (r < y0[:, None] + s)
            in_cols = (q >= x0[:, None]) & (q < x0[:, None] + s)
            x = x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)
        return x.contiguous()


class ImageCollator:
    """``collate_fn`` alternative: stack items and apply ``transform`` to the batch.

    Use with an :class:`ImageTensorDataset` without transform (its items are ``x / 255``),
    e.g. one collator for the training loader and another for evaluation.
    """

    def __init__(self, transform: ImageTransform | None = None) -> None:
        self.transform = transform

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        x = torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])
        y = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
        if self.transform is not None:
            x = self.transform(x)
        elif x.dtype == torch.uint8:
            x = x.float().div_(255)
        return {"pixel_values": x, "labels": y}


def attach_transforms(
    splits: Mapping[str, ImageTensorDataset],
    *,
    hflip: bool = False,
    crop_padding: int = 0,
    cutout_size: int = 0,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_channels: int | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> dict[str, ImageTensorDataset]:
    """Attach a random train transform to ``"train"`` and its deterministic part elsewhere.

    With ``normalize=True`` and no ``mean``/``std``, they are computed on the train split
    by :func:`channel_stats` (before resizing and channel conversion; a single gray
    channel's statistics apply to all three channels after 1 -> 3 conversion).
    """
    if normalize and mean is None and std is None:
        mean, std = channel_stats(splits["train"].images)
    if not normalize:
        mean = std = None
    train_tf = ImageTransform(hflip, crop_padding, cutout_size, mean, std, num_channels, image_size)
    eval_tf = train_tf.deterministic()
    return {k: v.with_transform(train_tf if k == "train" else eval_tf) for k, v in splits.items()}


def class_counts(dataset: ImageTensorDataset) -> list[int]:
    """Examples per class, indexed by label."""
    return torch.bincount(dataset.labels, minlength=dataset.num_classes).tolist()


__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "HUB_IMAGE_DATASETS",
    "ImageCollator",
    "ImageTensorDataset",
    "ImageTransform",
    "attach_transforms",
    "carve_split",
    "channel_stats",
    "class_counts",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_hub_image_dataset",
    "load_imagefolder",
    "read_idx",
]
