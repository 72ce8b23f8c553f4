"""Small building blocks shared by the CIFAR model families.

Kept private: each family file stays readable on its own, and these helpers hold only what
two or more families need (initialisation rules and the ShuffleNet channel shuffle).
"""

import math

import torch
from torch import Tensor, nn


def init_conv_bn_(module: nn.Module, linear: str = "default") -> None:
    """Initialise a model in place the way the RepDistiller/mdistiller CIFAR zoo does.

    Convolutions: ``N(0, 2 / (k_h · k_w · C_out))`` (He et al. 2015, "fan-out" mode, which is
    what both ``kaiming_normal_(mode="fan_out")`` and the zoo's hand-written
    ``normal_(0, sqrt(2 / n))`` compute), conv biases zero. BatchNorm: weight 1, bias 0.

    Linear layers, by ``linear``:
      * ``"default"``: PyTorch's default initialisation (ResNet, ResNet18/50 in the zoo);
      * ``"zero_bias"``: default weight, zero bias (WRN);
      * ``"normal"``: weight ``N(0, 0.01²)``, zero bias (VGG, MobileNetV2).
    """
    if linear not in ("default", "zero_bias", "normal"):
        raise ValueError(f"linear must be 'default', 'zero_bias' or 'normal', got {linear!r}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle (Zhang et al. 2018, §3.1).

    ``(N, g·c, H, W) → (N, g, c, H, W) → (N, c, g, H, W) → (N, c·g, H, W)``: channel ``i·c + j``
    moves to position ``j·g + i``, so the next grouped convolution sees every input group.
    Works on any memory format (``unflatten`` only splits a dimension; ``flatten`` copies if
    it must).
    """
    if groups == 1:
        return x
    n_channels = x.shape[1]
    if n_channels % groups != 0:
        raise ValueError(
            f"channel_shuffle: {n_channels} channels do not split into {groups} groups"
        )
    return x.unflatten(1, (groups, n_channels // groups)).transpose(1, 2).flatten(1, 2)


def global_avg_pool(x: Tensor) -> Tensor:
    """Global average pooling to ``(N, C)``.

    The zoo pools with a fixed kernel (``AvgPool2d(8)`` for ResNet, ``avg_pool2d(·, 4)`` for
    ShuffleNet, …) sized so the last feature map of a 32×32 input becomes 1×1; averaging the
    whole map gives the same numbers there and also works for other input sizes.
    """
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
