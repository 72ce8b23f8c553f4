"""Vision: image classifiers (the CIFAR zoo and ImageNet models) and their training.

Importable without torchvision; only the ImageNet ResNets need it. The trainer-side names are
imported lazily so that ``import logitkd.vision`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .models import (
    available_imagenet_models,
    available_models,
    create_imagenet_model,
    create_model,
    load_pretrained,
)

_LAZY = {
    "Trainer": "logitkd.vision.trainer",
    "TrainResult": "logitkd.vision.trainer",
    "VisionConfig": "logitkd.vision.config",
    "load_vision_config": "logitkd.vision.config",
    "build_loss": "logitkd.vision.losses_factory",
    "build_model": "logitkd.vision.models_small",
    "run_demo": "logitkd.vision.demo",
    "build_dataset": "logitkd.vision.data",
    "iterate_batches": "logitkd.vision.data",
    "random_crop_flip": "logitkd.vision.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'logitkd.vision' has no attribute {name!r}")


__all__ = [
    "TrainResult",
    "Trainer",
    "VisionConfig",
    "available_imagenet_models",
    "available_models",
    "build_dataset",
    "build_loss",
    "build_model",
    "create_imagenet_model",
    "create_model",
    "iterate_batches",
    "load_pretrained",
    "load_vision_config",
    "random_crop_flip",
    "run_demo",
]
