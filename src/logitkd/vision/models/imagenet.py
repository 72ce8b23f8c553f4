"""ImageNet models for the ImageNet KD pairs (ResNet34 → ResNet18, ResNet50 → MobileNetV1).

ResNet18/34/50 are torchvision's (``pip install logitkd[vision]``), whose published weights
the ImageNet KD papers use as teachers. MobileNetV1 (Howard et al. 2017, Table 1, width 1.0,
224×224 input) is written here, layer for layer as the MobileNetV1 of CRD / mdistiller
(``models/imagenet/mobilenetv1.py``: ``model`` = ``Sequential`` of 14 conv blocks and the
pooling, then ``fc``), so their checkpoints load by key and it never needs torchvision.
Pretrained weights come only from a local file (``weights_path``); nothing is downloaded.
"""

import os
from collections.abc import Callable

from torch import Tensor, nn

from .checkpoint_io import load_pretrained

# (output channels, stride) of the 13 depthwise-separable blocks after the 3×3 stem (32 ch, /2).
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _conv_bn(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Full 3×3 conv → BN → ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _conv_dw(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Depthwise-separable conv: 3×3 depthwise → BN → ReLU → 1×1 pointwise → BN → ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (width 1.0); ``forward`` returns logits ``(N, num_classes)``.

    ``model[14]`` is the global average pooling (the reference's ``AvgPool2d(7)``, identical for
    224×224 inputs; adaptive here so other sizes work).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 2)]
        in_ch = 32
        for out_ch, stride in _MOBILENET_V1_BLOCKS:
            layers.append(_conv_dw(in_ch, out_ch, stride))
            in_ch = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _torchvision_resnet(arch: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        try:
            from torchvision import models
        except ImportError as err:
            raise ImportError(
                f"the ImageNet {arch} comes from torchvision, which is not installed: "
                "pip install logitkd[vision]"
            ) from err
        return getattr(models, arch)(weights=None, num_classes=num_classes)

    return build


_IMAGENET_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "ResNet18": _torchvision_resnet("resnet18"),
    "ResNet34": _torchvision_resnet("resnet34"),
    "ResNet50": _torchvision_resnet("resnet50"),
    "MobileNetV1": MobileNetV1,
}


def available_imagenet_models() -> list[str]:
    """Names accepted by :func:`create_imagenet_model`."""
    return list(_IMAGENET_FACTORIES)


def create_imagenet_model(
    name: str, num_classes: int = 1000, weights_path: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Build an ImageNet model by name (case-insensitive), optionally loading local weights.

    ``weights_path`` is read by :func:`~logitkd.vision.models.checkpoint_io.load_pretrained`
    (strict). The ResNets need torchvision (``ImportError`` naming ``logitkd[vision]``
    otherwise); MobileNetV1 does not.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    by_lower = {n.lower(): n for n in _IMAGENET_FACTORIES}
    canonical = by_lower.get(name.lower())
    if canonical is None:
        raise ValueError(
            f"unknown ImageNet model name {name!r}; valid names: {', '.join(_IMAGENET_FACTORIES)}"
        )
    model = _IMAGENET_FACTORIES[canonical](num_classes)
    if weights_path is not None:
        load_pretrained(model, weights_path, strict=True)
    return model


__all__ = ["MobileNetV1", "available_imagenet_models", "create_imagenet_model"]
