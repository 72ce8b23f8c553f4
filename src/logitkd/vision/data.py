"""Image-classification data: readers, an in-memory dataset, batching and batched augmentation.

Readers (no torchvision needed):

* :func:`load_cifar` — the CIFAR-10 / CIFAR-100 python-pickle directories
  (https://www.cs.toronto.edu/~kriz/cifar.html).
* :func:`load_fashion_mnist` — gzipped or plain IDX files (Xiao et al. 2017, LeCun's IDX format).
* :func:`load_image_folder` — an ImageNet-style ``root/{train,val}/<class>/<image>`` tree, decoded
  lazily with Pillow and the standard ImageNet train / eval transforms.
* :func:`load_digits_split` — scikit-learn's offline 8×8 digits, a built-in demo set.
* :func:`build_dataset` — one dispatcher over the names above.

The small sets are held in memory as :class:`ArrayDataset` (uint8 or float ``N×C×H×W`` images,
int64 labels) and batched by :func:`iterate_batches`, which slices whole batches by index (no
per-sample Python loop, no worker processes) and shards each epoch across DDP ranks the way
``torch.utils.data.DistributedSampler`` does. :func:`random_crop_flip` is the CIFAR train
augmentation (pad 4, random 32×32 crop, horizontal flip) done for a whole batch at once on any
device.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:  # Pillow is only needed for ImageFolder trees; import it lazily.
    from PIL.Image import Image as PILImage

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "ImageFolderDataset",
    "ImageNetEvalTransform",
    "ImageNetTrainTransform",
    "batches_per_epoch",
    "build_dataset",
    "crop_flip",
    "epoch_indices",
    "iterate_batches",
    "load_cifar",
    "load_digits_split",
    "load_fashion_mnist",
    "load_image_folder",
    "normalize",
    "pad_to_size",
    "random_crop_flip",
    "random_resized_crop_box",
    "read_idx",
    "repeat_channels",
    "sample_crop_flip_params",
    "to_unit_float",
]

# Per-channel statistics of the training sets in [0, 1] units, as used by mdistiller / RepDistiller
# (CIFAR), the Fashion-MNIST literature, and torchvision's ImageNet models.
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, ...] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, ...] = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
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

DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "fashion_mnist", "imagenet", "digits")

Split = Literal["train", "test"]


# --------------------------------------------------------------------------------------------
# In-memory dataset
# --------------------------------------------------------------------------------------------


@dataclass
class ArrayDataset:
    """A whole image-classification split held as two tensors.

    ``images`` is ``(N, C, H, W)``: ``uint8`` in ``[0, 255]`` or a floating dtype already in
    ``[0, 1]``. ``labels`` is ``(N,)`` int64 in ``[0, num_classes)``. ``mean``/``std`` are the
    per-channel normalisation statistics in ``[0, 1]`` units. Indexing is ``TensorDataset``-like:
    ``ds[i] == (images[i], labels[i])`` (raw, not normalised); use :func:`iterate_batches` to get
    normalised float batches.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4:
            raise ValueError(
                f"ArrayDataset.images must be a 4-D (N, C, H, W) tensor, got "
                f"{type(self.images).__name__} with shape {tuple(getattr(self.images, 'shape', ()))}"
            )
        if self.images.dtype != torch.uint8 and not self.images.is_floating_point():
            raise TypeError(
                f"ArrayDataset.images must be uint8 or floating point, got {self.images.dtype}"
            )
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64:
            raise TypeError(
                f"ArrayDataset.labels must be an int64 tensor, got "
                f"{getattr(self.labels, 'dtype', type(self.labels).__name__)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ArrayDataset.labels must have shape ({self.images.shape[0]},) to match images, "
                f"got {tuple(self.labels.shape)}"
            )
        if self.num_classes < 1:
            raise ValueError(f"ArrayDataset.num_classes must be >= 1, got {self.num_classes}")
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"ArrayDataset.labels must lie in [0, {self.num_classes}), got range "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        channels = self.images.shape[1]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"ArrayDataset.mean/std need one value per channel ({channels}), got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(
                f"ArrayDataset.classes has {len(self.classes)} names for {self.num_classes} classes"
            )
        self.classes = tuple(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Tensor | Sequence[int]) -> ArrayDataset:
        """A new dataset with the rows ``indices`` (copied), same metadata."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ArrayDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
            classes=self.classes,
        )


# --------------------------------------------------------------------------------------------
# CIFAR python pickles
# --------------------------------------------------------------------------------------------

_CIFAR_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "num_classes": 10,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "num_classes": 100,
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
    },
}

# Globals a CIFAR pickle may reference: numpy's array/dtype reconstruction (numpy 1.x ``core`` and
# 2.x ``_core`` spellings, protocol ≤4 ``_reconstruct`` and protocol 5 ``_frombuffer``) and the
# helper protocol-2 pickles use for ``bytes``. Anything else is refused, so that reading a data
# file can never run arbitrary code.
_PICKLE_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that only reconstructs builtins and numpy arrays (see the allow-list)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: a CIFAR pickle may only hold numpy arrays, "
            "lists, strings and numbers"
        )


def _decode(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _load_pickle_dict(path: Path) -> dict[str, Any]:
    """Read one CIFAR pickle as a dict with ``str`` keys.

    The original Python 2 files give ``bytes`` keys under ``encoding="bytes"``; files re-pickled
    under Python 3 give ``str`` keys. Both are normalised to ``str``.
    """
    try:
        with path.open("rb") as f:
            obj = _DataOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_decode(k): v for k, v in obj.items()}


def _field(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise ValueError(f"{path}: missing field {key!r} (fields present: {sorted(d)})")
    return d[key]


def _cifar_batch(path: Path, labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(data uint8 (n, 3072), labels int64 (n,))`` of one CIFAR batch file, validated."""
    d = _load_pickle_dict(path)
    data = _field(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(
            f"{path}: field 'data' must be a uint8 array of shape (n, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: field 'data' must have 3072 = 3×32×32 columns, got shape {data.shape}"
        )
    raw_labels = _field(d, labels_key, path)
    labels = np.asarray(raw_labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{path}: field {labels_key!r} must be a list of {data.shape[0]} labels (one per "
            f"row of 'data'), got shape {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: field {labels_key!r} must hold integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: field {labels_key!r} must lie in [0, {num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return data, labels


def _resolve_cifar_dir(root: Path, layout: dict[str, Any], name: str) -> Path:
    folder = layout["folder"]
    if (root / folder).is_dir():
        return root / folder
    if (root / layout["meta"]).is_file() or root.name == folder:
        return root
    raise FileNotFoundError(
        f"no {name} data under {root}: expected {root / folder}/ (or root pointing at that "
        f"folder) holding {', '.join((*layout['train'], *layout['test'], layout['meta']))}"
    )


def load_cifar(
    root: str | Path,
    name: Literal["cifar10", "cifar100"] = "cifar10",
    split: Split = "train",
) -> ArrayDataset:
    """Read a CIFAR-10 / CIFAR-100 split from the standard python-pickle directory.

    Layout (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html):
    ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` with labels under
    ``labels`` and class names under ``label_names``; ``cifar-100-python/{train, test, meta}``
    with ``fine_labels`` / ``fine_label_names``. ``root`` may be that folder or its parent.

    Each row of ``data`` is 3072 uint8 values: the 1024 red, then green, then blue pixels, each
    plane row-major, so ``data.reshape(n, 3, 32, 32)`` is the ``(N, C, H, W)`` image.

    Returns an :class:`ArrayDataset` with uint8 images ``(N, 3, 32, 32)``, int64 labels, the
    class names from the meta file and the mdistiller normalisation statistics.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message names it).
        ValueError: bad ``name``/``split``, or a file is not a well-formed CIFAR pickle (the
            message names the file and field).
    """
    if name not in _CIFAR_LAYOUT:
        raise ValueError(f"name must be one of {sorted(_CIFAR_LAYOUT)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    layout = _CIFAR_LAYOUT[name]
    directory = _resolve_cifar_dir(Path(root), layout, name)
    files = [directory / f for f in (*layout[split], layout["meta"])]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: missing file {path}; expected layout {directory}/"
                f"{{{', '.join((*layout['train'], *layout['test'], layout['meta']))}}}"
            )
    num_classes: int = layout["num_classes"]
    batches = [_cifar_batch(p, layout["labels_key"], num_classes) for p in files[:-1]]
    data = np.concatenate([b[0] for b in batches])  # always a fresh, writable array
    labels = np.concatenate([b[1] for b in batches])

    meta_path = files[-1]
    names = _field(_load_pickle_dict(meta_path), layout["names_key"], meta_path)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise ValueError(
            f"{meta_path}: field {layout['names_key']!r} must list {num_classes} class names, "
            f"got {type(names).__name__} of length {len(names) if hasattr(names, '__len__') else '?'}"
        )
    return ArrayDataset(
        images=torch.from_numpy(data).view(-1, 3, 32, 32),
        labels=torch.from_numpy(labels),
        num_classes=num_classes,
        mean=layout["mean"],
        std=layout["std"],
        name=name,
        classes=tuple(str(_decode(n)) for n in names),
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST IDX files
# --------------------------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or plain) into a uint8 array.

    Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of 4 magic
    bytes ``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte), then ``ndim`` big-endian
    uint32 sizes, then ``prod(sizes)`` data bytes. Labels are ``ndim=1`` (magic 2049), images
    ``ndim=3`` (magic 2051). gzip is detected from the content, not the file name.

    Raises ValueError naming the file on a wrong magic number, truncated or oversized data, or a
    corrupt gzip stream.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    expected_magic = (_IDX_UBYTE << 8) | ndim
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes is shorter than the {header}-byte IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path}: IDX magic number {magic} (0x{magic:08x}) != {expected_magic} "
            f"(0x{expected_magic:08x}, unsigned bytes with {ndim} dimension(s))"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} = {expected} bytes of data, file holds "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"fashion_mnist: missing file {directory / stem}.gz (or {stem} uncompressed); expected "
        f"{directory}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]"
    )


def load_fashion_mnist(root: str | Path, split: Split = "train") -> ArrayDataset:
    """Read Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its four IDX files.

    Files: ``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]``
    in ``root`` (or ``root/fashion-mnist``); ``split="test"`` reads the ``t10k`` pair. Returns
    uint8 images ``(N, 1, H, W)`` (28×28 for the real set), int64 labels in ``[0, 10)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    directory = root / "fashion-mnist" if (root / "fashion-mnist").is_dir() else root
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"fashion_mnist: {images_path} holds {images.shape[0]} images but {labels_path} "
            f"holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: labels must lie in [0, 10), found {labels.max()}")
    return ArrayDataset(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels),
        num_classes=len(FASHION_MNIST_CLASSES),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        name="fashion_mnist",
        classes=FASHION_MNIST_CLASSES,
    )


# --------------------------------------------------------------------------------------------
# Built-in demo set: scikit-learn digits
# --------------------------------------------------------------------------------------------


def load_digits_split(
    seed: int = 0, test_fraction: float = 0.25
) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes; ships offline) as a
    stratified train/test pair.

    Pixels are 0..16 in the source; they are returned as float32 ``(N, 1, 8, 8)`` in ``[0, 1]``
    (divided by 16). The split is ``sklearn.model_selection.train_test_split`` stratified by
    label with ``random_state=seed``, so it is fixed for a given seed. ``mean``/``std`` are
    measured on the training part only.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    mean = (float(x_train.mean()),)
    std = (float(x_train.std()),)
    classes = tuple(str(c) for c in range(10))

    def make(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(
            images=torch.from_numpy(np.ascontiguousarray(x)),
            labels=torch.from_numpy(np.ascontiguousarray(y)),
            num_classes=10,
            mean=mean,
            std=std,
            name="digits",
            classes=classes,
        )

    return make(x_train, y_train), make(x_test, y_test)


# --------------------------------------------------------------------------------------------
# Tensor transforms: conversion, normalisation, batched crop + flip
# --------------------------------------------------------------------------------------------


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` → float32 ``[0, 1]`` (``x / 255``, as ``ToTensor``); floating input is
    assumed to be in ``[0, 1]`` already and is only cast to float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean[c]) / std[c]`` of ``(N, C, H, W)`` or ``(C, H, W)`` images.

    uint8 input is first scaled to ``[0, 1]`` (:func:`to_unit_float`), matching torchvision's
    ``ToTensor`` then ``Normalize``. Returns float32.
    """
    x = to_unit_float(images)
    channels = x.shape[-3] if x.ndim >= 3 else -1
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need one value per channel ({channels}) of images with shape "
            f"{tuple(x.shape)}, got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def sample_crop_flip_params(
    n: int,
    padding: int,
    *,
    flip: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw per-sample ``(top, left, flipped)`` for :func:`crop_flip`.

    ``top`` and ``left`` are uniform in ``{0, …, 2·padding}`` (the window's offset inside the
    zero-padded image, as ``RandomCrop(size, padding)``) and ``flipped`` is Bernoulli(½) (as
    ``RandomHorizontalFlip``), all false when ``flip=False``. Drawn on the generator's device
    (CPU when none is given and ``device`` is None) and returned on ``device``.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    draw_device = generator.device if generator is not None else (device or "cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_device)
    if flip:
        flipped = torch.rand(n, generator=generator, device=draw_device) < 0.5
    else:
        flipped = torch.zeros(n, dtype=torch.bool, device=draw_device)
    out = device if device is not None else draw_device
    return top.to(out), left.to(out), flipped.to(out)


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flipped: Tensor, padding: int) -> Tensor:
    """Zero-pad ``images`` by ``padding`` on every side, take each sample's ``H×W`` window at
    ``(top[i], left[i])`` and mirror it left-right where ``flipped[i]``. Deterministic.

    ``out[i, c, y, x] = P[i, c, top[i] + y, left[i] + x']`` with ``x' = W-1-x`` when flipped
    else ``x``, where ``P`` is the padded batch. Done for the whole batch by one advanced-indexing
    gather (no loop over samples); any dtype, any device.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n = images.shape[0]
    for arg_name, t in (("top", top), ("left", left), ("flipped", flipped)):
        if t.shape != (n,):
            raise ValueError(f"{arg_name} must have shape ({n},), got {tuple(t.shape)}")
    out_of_range = (top < 0) | (top > 2 * padding) | (left < 0) | (left > 2 * padding)
    if bool(out_of_range.any()):  # negative indices would wrap around silently
        raise ValueError(f"top and left offsets must lie in [0, {2 * padding}]")
    return _crop_flip_unchecked(images, top, left, flipped, padding)


def _crop_flip_unchecked(
    images: Tensor, top: Tensor, left: Tensor, flipped: Tensor, padding: int
) -> Tensor:
    # No range check here: random_crop_flip draws in-range offsets, and checking would cost a
    # device→host sync per batch on GPU.
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = top.to(dev).view(n, 1) + torch.arange(h, device=dev)  # (N, H)
    cols = left.to(dev).view(n, 1) + torch.arange(w, device=dev)  # (N, W)
    cols = torch.where(flipped.to(dev).view(n, 1), cols.flip(1), cols)
    batch_idx = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan_idx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch_idx, chan_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def random_crop_flip(
    images: Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
) -> Tensor:
    """The CIFAR train augmentation for a whole batch: ``RandomCrop(H×W, padding)`` with zero
    padding, then ``RandomHorizontalFlip(p=0.5)``, independently per sample.

    Same as mdistiller / RepDistiller's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``
    on 32×32 images. Apply it before normalisation so the padding is black (0), as in those
    pipelines. Input ``(N, C, H, W)`` of any dtype on any device; output has the same shape,
    dtype and device. Pass a ``generator`` for reproducibility (it may live on CPU or on the
    images' device).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    top, left, flipped = sample_crop_flip_params(
        images.shape[0], padding, flip=flip, generator=generator, device=images.device
    )
    return _crop_flip_unchecked(images, top, left, flipped, padding)


# --------------------------------------------------------------------------------------------
# Batching with DDP sharding
# --------------------------------------------------------------------------------------------


def epoch_indices(
    n: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """This rank's sample indices for one epoch, as ``DistributedSampler(drop_last=False)``.

    The epoch order is ``torch.randperm(n, generator=generator)`` (or ``arange(n)`` without
    shuffling). It is padded by repeating its head until its length ``T = ceil(n / world_size)
    · world_size`` is a multiple of ``world_size``, and rank ``r`` takes ``order[r::world_size]``
    — so ranks are disjoint apart from the ``T - n`` padded repeats, their union is every index,
    and every rank has the same count. All ranks must pass generators in the same state (e.g.
    ``torch.Generator().manual_seed(seed + epoch)``) to agree on the order.
    """
    if n < 1:
        raise ValueError(f"dataset must be non-empty, got n={n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need world_size >= 1 and 0 <= rank < world_size, got {rank=} {world_size=}"
        )
    if shuffle and world_size > 1 and generator is None:
        raise ValueError(
            "shuffle with world_size > 1 needs a generator seeded identically on every rank, "
            "otherwise the ranks' shards overlap"
        )
    if shuffle:
        draw_device = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=draw_device).cpu()
    else:
        order = torch.arange(n)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        reps = math.ceil((total - n) / n)
        order = torch.cat([order, order.repeat(reps)[: total - n]])
    return order[rank:total:world_size]


def batches_per_epoch(
    n: int, batch_size: int, *, world_size: int = 1, drop_last: bool = False
) -> int:
    """Number of batches :func:`iterate_batches` yields per rank for ``n`` samples."""
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def iterate_batches(
    ds: ArrayDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    augment: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches of one epoch: float32 images normalised with
    ``ds.mean``/``ds.std`` and int64 labels, both on ``device``.

    ``batch_size`` is **per rank**: with DDP over ``world_size`` processes one optimiser step sees
    a global batch of ``batch_size · world_size``. Each rank iterates its shard from
    :func:`epoch_indices` (same permutation everywhere for the same generator state, disjoint
    slices, padded so every rank yields the same number of batches — see
    :func:`batches_per_epoch`). ``drop_last`` drops the final short batch of the shard.

    Each batch is gathered with one index operation, moved to ``device`` in its stored dtype
    (uint8 keeps the copy 4× smaller), passed to ``augment`` (e.g. :func:`random_crop_flip`,
    which sees images before normalisation so padding is black), then converted and normalised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = epoch_indices(
        len(ds), shuffle=shuffle, generator=generator, rank=rank, world_size=world_size
    )
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    # Arguments are checked and the epoch order drawn here, at call time; batches are produced
    # lazily by the inner generator.
    return _batches(ds, indices[:stop], batch_size, augment, device)


def _batches(
    ds: ArrayDataset,
    indices: Tensor,
    batch_size: int,
    augment: Callable[[Tensor], Tensor] | None,
    device: torch.device | str | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    source_device = ds.images.device
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size].to(source_device)
        images = ds.images[idx]
        labels = ds.labels[idx]
        if device is not None:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        yield normalize(images, ds.mean, ds.std), labels


# --------------------------------------------------------------------------------------------
# ImageNet-style ImageFolder trees (lazy, Pillow)
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """``(left, top, crop_width, crop_height)`` of an Inception-style random-resized crop.

    Algorithm of Szegedy et al. 2015 as in torchvision's ``RandomResizedCrop.get_params``: up to
    ``attempts`` times draw an area fraction ``s ~ U(scale)`` and a log-uniform aspect ratio
    ``r ~ exp U(log ratio)``; ``w = round(sqrt(s·W·H·r))``, ``h = round(sqrt(s·W·H/r))``; accept
    the first that fits and place it uniformly. Fallback: the largest centred crop whose ratio
    is clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _pil_to_normalized(img: PILImage, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    chw = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return normalize(chw, mean, std)


@dataclass
class ImageNetTrainTransform:
    """PIL image → float32 ``(3, size, size)``: ``RandomResizedCrop(size)`` (bilinear),
    ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` — the standard ImageNet
    training pipeline (He et al. 2016 / torchvision references), without torchvision.

    Randomness comes from ``generator`` or, when None, torch's global RNG (which a ``DataLoader``
    reseeds per worker, so workers draw different crops).
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    generator: torch.Generator | None = None

    def __call__(self, img: PILImage) -> Tensor:
        from PIL import Image

        left, top, w, h = random_resized_crop_box(
            img.width, img.height, self.scale, self.ratio, self.generator
        )
        out = img.convert("RGB").resize(
            (self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )
        if float(torch.rand(1, generator=self.generator)) < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _pil_to_normalized(out, self.mean, self.std)


@dataclass
class ImageNetEvalTransform:
    """PIL image → float32 ``(3, crop, crop)``: ``Resize(resize)`` (shorter side, bilinear),
    ``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean, std)`` — the standard ImageNet
    evaluation pipeline (resize 256, centre crop 224)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, img: PILImage) -> Tensor:
        from PIL import Image

        img = img.convert("RGB")
        w, h = img.size
        # torchvision's Resize(int): shorter side → resize, longer side truncated (int()).
        size = (
            (self.resize, int(self.resize * h / w))
            if w <= h
            else (int(self.resize * w / h), self.resize)
        )
        if size != (w, h):
            img = img.resize(size, Image.Resampling.BILINEAR)
        w, h = img.size
        if w < self.crop or h < self.crop:
            raise ValueError(f"image of size {w}×{h} is smaller than the {self.crop} centre crop")
        top = round((h - self.crop) / 2)
        left = round((w - self.crop) / 2)
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return _pil_to_normalized(img, self.mean, self.std)


class ImageFolderDataset(Dataset):
    """A lazy ``root/<class>/<image>`` dataset: ``ds[i] = (transform(PIL image), label)``.

    Classes are the sub-folder names in sorted order (or ``classes`` when given, so a val split
    shares the train split's label indices); samples are the image files under them, sorted.
    """

    def __init__(
        self,
        directory: str | Path,
        transform: Callable[[PILImage], Tensor],
        classes: Sequence[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.transform = transform
        if not self.directory.is_dir():
            raise FileNotFoundError(f"image folder {self.directory} does not exist")
        found = sorted(p.name for p in self.directory.iterdir() if p.is_dir())
        if classes is None:
            classes = found
        missing = sorted(set(classes) - set(found))
        if missing:
            raise FileNotFoundError(f"{self.directory}: class folders {missing[:5]} not found")
        if not classes:
            raise FileNotFoundError(
                f"{self.directory}: no class folders; expected {self.directory}/<class>/<image>"
            )
        self.classes: tuple[str, ...] = tuple(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for c in self.classes:
            files = sorted(
                p
                for p in (self.directory / c).rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                empty.append(c)
            self.samples.extend((p, self.class_to_idx[c]) for p in files)
        if empty:
            raise FileNotFoundError(
                f"{self.directory}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders "
                f"{empty[:5]}{' …' if len(empty) > 5 else ''}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            img.load()
            return self.transform(img), label


def load_image_folder(
    root: str | Path,
    split: Literal["train", "val", "test"] = "train",
    *,
    transform: Callable[[PILImage], Tensor] | None = None,
    classes: Sequence[str] | None = None,
) -> ImageFolderDataset:
    """An ImageNet-style split from ``root/train/<class>/*`` or ``root/val/<class>/*``.

    ``split="train"`` uses :class:`ImageNetTrainTransform` (random-resized crop 224 + flip),
    ``"val"``/``"test"`` use :class:`ImageNetEvalTransform` (resize 256, centre crop 224) and
    read ``root/val`` (or ``root/test`` when there is no ``val``). Both normalise with the
    ImageNet mean/std. Pass ``transform`` to override, ``classes`` to pin the label order.
    """
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    candidates = ("train",) if split == "train" else ("val", "test")
    directory = next((root / c for c in candidates if (root / c).is_dir()), None)
    if directory is None:
        raise FileNotFoundError(
            f"no {split} split under {root}: expected {' or '.join(str(root / c) for c in candidates)}"
            f"/<class>/<image>"
        )
    if transform is None:
        transform = ImageNetTrainTransform() if split == "train" else ImageNetEvalTransform()
    return ImageFolderDataset(directory, transform, classes)


# --------------------------------------------------------------------------------------------
# Shape adapters (a 28×28 grey set through a 3×32×32 CIFAR-zoo model)
# --------------------------------------------------------------------------------------------


def pad_to_size(ds: ArrayDataset, size: int) -> ArrayDataset:
    """Zero-pad every image of ``ds`` to ``size × size``, centred (the extra row/column of an odd
    difference goes to the bottom/right).

    ``x'[:, :, t + i, l + j] = x[:, :, i, j]`` with ``t = ⌊(size − H)/2⌋``, ``l = ⌊(size − W)/2⌋``,
    0 elsewhere — black, like the CIFAR crop padding, which matches Fashion-MNIST's background.
    This is how LeNet-5 fed 28×28 MNIST digits to a 32×32 input (LeCun et al. 1998).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"pad_to_size: size must be a positive int, got {size!r}")
    _, _, h, w = ds.images.shape
    if size < h or size < w:
        raise ValueError(
            f"pad_to_size: size={size} is smaller than the {ds.name or 'dataset'} images "
            f"({h}×{w}); padding cannot shrink images"
        )
    if size == h == w:
        return ds
    top, left = (size - h) // 2, (size - w) // 2
    images = F.pad(ds.images, (left, size - w - left, top, size - h - top))
    return replace(ds, images=images)


def repeat_channels(ds: ArrayDataset, channels: int = 3) -> ArrayDataset:
    """Repeat a 1-channel (grey) set ``channels`` times, with its mean/std repeated alike, so
    the normalised input of every channel equals the grey one.

    A set that already has ``channels`` channels is returned as is; any other count raises.
    """
    c = ds.images.shape[1]
    if c == channels:
        return ds
    if c != 1:
        raise ValueError(
            f"repeat_channels: only a 1-channel set can be repeated to {channels} channels, "
            f"{ds.name or 'the dataset'} has {c}"
        )
    return replace(
        ds,
        images=ds.images.expand(-1, channels, -1, -1).contiguous(),
        mean=ds.mean * channels,
        std=ds.std * channels,
    )


# --------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------


def build_dataset(
    name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any
) -> ArrayDataset | ImageFolderDataset:
    """Build a split by dataset name: ``cifar10``, ``cifar100``, ``fashion_mnist`` (→
    :class:`ArrayDataset` read from ``root``), ``imagenet`` (→ :class:`ImageFolderDataset`;
    ``kwargs`` go to :func:`load_image_folder`) or ``digits`` (built-in, ``root`` ignored;
    ``kwargs`` go to :func:`load_digits_split`). ``-`` and ``_`` are interchangeable in names.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if key == "digits":
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        train, test = load_digits_split(**kwargs)
        return train if split == "train" else test
    if root is None:
        raise ValueError(f"dataset {key!r} needs root (the folder holding its files)")
    if kwargs and key != "imagenet":
        raise TypeError(f"dataset {key!r} takes no extra options, got {sorted(kwargs)}")
    if key in ("cifar10", "cifar100"):
        return load_cifar(root, key, split)  # type: ignore[arg-type]
    if key == "fashion_mnist":
        return load_fashion_mnist(root, split)  # type: ignore[arg-type]
    return load_image_folder(root, split, **kwargs)  # type: ignore[arg-type]
