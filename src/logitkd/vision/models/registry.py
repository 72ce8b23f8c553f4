"""Build a CIFAR-zoo model by its RepDistiller / mdistiller name.

Names and architectures follow the CIFAR model dictionaries of RepDistiller (Tian et al.,
"Contrastive Representation Distillation", ICLR 2020) and mdistiller (Zhao et al., "Decoupled
Knowledge Distillation", CVPR 2022), so the teachers they publish load by state-dict key
(see :func:`logitkd.vision.models.checkpoint_io.load_pretrained`).
"""

import difflib
from collections.abc import Callable

from torch import nn

from . import mobilenetv2, resnet_cifar, resnet_imagenet_style, shufflenetv1, shufflenetv2, vgg, wrn

_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    **resnet_cifar.MODELS,
    **wrn.MODELS,
    **vgg.MODELS,
    **mobilenetv2.MODELS,
    **shufflenetv1.MODELS,
    **shufflenetv2.MODELS,
    **resnet_imagenet_style.MODELS,
}


def available_models() -> list[str]:
    """Names accepted by :func:`create_model`, grouped by family."""
    return list(_FACTORIES)


def _unknown_name_message(name: str, names: list[str]) -> str:
    # Compare case-insensitively so "resnet18" suggests "ResNet18".
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
    hint = f" Did you mean {by_lower[close[0]]!r}?" if close else ""
    return f"unknown model name {name!r}.{hint} Valid names: {', '.join(names)}"


def create_model(name: str, num_classes: int = 100) -> nn.Module:
    """Build the CIFAR-zoo model ``name`` (randomly initialised) for ``num_classes`` classes.

    The model takes ``(N, 3, 32, 32)`` images and ``forward(x)`` returns logits
    ``(N, num_classes)``; ``forward_features(x)`` returns the pooled embedding the classifier
    reads. Raises ``ValueError`` for an unknown name (listing the valid ones and the closest
    match) or a non-positive ``num_classes``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(_unknown_name_message(name, available_models()))
    return factory(num_classes)
