"""Tiny classifiers for small images (the built-in digits demo, tests, quick experiments).

Not part of the CIFAR zoo (whose names and layers mirror RepDistiller / mdistiller); these are
sized for 8×8 or 28×28 inputs of any channel count and contain **no BatchNorm**, so a DDP run
and a single-process run on the same global batch give the same weights (BN statistics are
per-rank in DDP). :func:`build_model` resolves a name against these, the CIFAR zoo and the
ImageNet models, in that order.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import Tensor, nn

from logitkd.vision.models import (
    available_imagenet_models,
    available_models,
    create_imagenet_model,
    create_model,
)

__all__ = ["SMALL_MODELS", "DigitsCNN", "TinyMLP", "all_model_names", "build_model"]


class TinyMLP(nn.Module):
    """``flatten -> Linear(C·H·W, hidden) -> ReLU -> Linear(hidden, num_classes)``."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], hidden: int = 64) -> None:
        super().__init__()
        c, h, w = in_shape
        self.fc1 = nn.Linear(c * h * w, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.fc1(x.flatten(1)).relu()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


class DigitsCNN(nn.Module):
    """Two 3×3 conv layers (ReLU, the second followed by 2×2 max-pool), global average pool,
    linear classifier. ``width`` sets the channel count (``width``, ``2·width``)."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], width: int = 16) -> None:
        super().__init__()
        c = in_shape[0]
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x).relu()
        x = nn.functional.max_pool2d(self.conv2(x).relu(), 2)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


SMALL_MODELS: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "mlp": lambda n, s: TinyMLP(n, s, hidden=64),
    "mlp_tiny": lambda n, s: TinyMLP(n, s, hidden=16),
    "digits_cnn": lambda n, s: DigitsCNN(n, s, width=16),
    "digits_cnn_wide": lambda n, s: DigitsCNN(n, s, width=32),
}


def all_model_names() -> list[str]:
    """Every name :func:`build_model` accepts: small models, CIFAR zoo, ImageNet models."""
    return [*SMALL_MODELS, *available_models(), *available_imagenet_models()]


def build_model(
    name: str, num_classes: int, in_shape: tuple[int, int, int] = (3, 32, 32)
) -> nn.Module:
    """Build a randomly initialised classifier by name for ``num_classes`` classes.

    ``in_shape`` (C, H, W) sizes the small models; the CIFAR zoo expects 3×32×32 and the
    ImageNet models 3×224×224 — a mismatch in channels raises ``ValueError`` here rather than a
    shape error deep inside the first convolution. ``ResNet18``/``ResNet50`` exist in both the
    CIFAR zoo and the ImageNet set: the ImageNet one is chosen for inputs of 64 pixels or more,
    or always with the prefix ``imagenet:`` (``imagenet:ResNet50``). Unknown names raise
    ``ValueError`` listing the valid ones and the closest match.
    """
    if name in SMALL_MODELS:
        return SMALL_MODELS[name](num_classes, in_shape)
    imagenet_names = {n.lower(): n for n in available_imagenet_models()}
    explicit = name.lower().startswith("imagenet:")
    bare = name.split(":", 1)[1] if explicit else name
    if explicit or (in_shape[1] >= 64 and bare.lower() in imagenet_names):
        if bare.lower() not in imagenet_names:
            raise ValueError(
                f"unknown ImageNet model {bare!r}; valid: {', '.join(imagenet_names.values())}"
            )
        if in_shape[0] != 3:
            raise ValueError(
                f"model {name!r} expects RGB images, the dataset has {in_shape[0]} channel(s)"
            )
        return create_imagenet_model(imagenet_names[bare.lower()], num_classes)
    if name in available_models() or name in available_imagenet_models():
        if in_shape[0] != 3:
            raise ValueError(
                f"model {name!r} expects 3-channel (RGB) images but the dataset has "
                f"{in_shape[0]} channel(s); use a small model ({', '.join(SMALL_MODELS)}) or an "
                "RGB dataset"
            )
        if name in available_models():
            return create_model(name, num_classes)
        return create_imagenet_model(name, num_classes)
    names = all_model_names()
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=1, cutoff=0.5)
    hint = ""
    if close:
        hint = f" Did you mean {next(n for n in names if n.lower() == close[0])!r}?"
    raise ValueError(f"unknown model name {name!r}.{hint} Valid names: {', '.join(names)}")
