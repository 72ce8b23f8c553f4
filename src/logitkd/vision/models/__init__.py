"""Image classifiers: the CIFAR model zoo of RepDistiller / mdistiller and ImageNet models.

``create_model(name, num_classes)`` builds a CIFAR model (32×32 inputs) whose state-dict keys
and shapes match the published teacher checkpoints; ``load_pretrained(model, path)`` loads one
from a local file. ImageNet models live in :mod:`logitkd.vision.models.imagenet` (the ResNets
need torchvision; MobileNetV1 does not).
"""

from .checkpoint_io import load_pretrained, load_state_dict_checked
from .imagenet import available_imagenet_models, create_imagenet_model
from .registry import available_models, create_model

__all__ = [
    "available_imagenet_models",
    "available_models",
    "create_imagenet_model",
    "create_model",
    "load_pretrained",
    "load_state_dict_checked",
]
