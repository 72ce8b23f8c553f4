"""Vision: image classifiers (the CIFAR zoo and ImageNet models) and their training.

Importable without torchvision; only the ImageNet ResNets need it.
"""

from .models import (
    available_imagenet_models,
    available_models,
    create_imagenet_model,
    create_model,
    load_pretrained,
)

__all__ = [
    "available_imagenet_models",
    "available_models",
    "create_imagenet_model",
    "create_model",
    "load_pretrained",
]
