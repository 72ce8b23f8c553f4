"""CIFAR ResNets (He et al., "Deep Residual Learning", 2016, §4.2) as in the RepDistiller /
mdistiller zoo (``models/resnet.py``), layer for layer so their teacher checkpoints load by key.

Depth ``6n + 2``: a 3×3 stem conv (``conv1``, ``bn1``), three stages ``layer1..3`` of ``n``
basic blocks at strides (1, 2, 2), global average pooling and a linear ``fc``. Stage widths
are ``(stem, s1, s2, s3)`` = (16, 16, 32, 64) for resnet8…resnet110 and (32, 64, 128, 256)
for the 4×-wide ``resnet8x4`` / ``resnet32x4``. When a block changes shape its shortcut is a
1×1 conv + BN stored under ``downsample`` (option B of the paper); otherwise it is identity.
"""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import global_avg_pool, init_conv_bn_


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3×3 convs."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` with stage widths ``widths = (stem, s1, s2, s3)``.

    ``forward(x)`` returns logits ``(N, num_classes)``; ``forward_features(x)`` returns the
    pooled ``(N, s3)`` embedding that ``fc`` reads.
    """

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, …), got {depth}")
        n_blocks = (depth - 2) // 6
        stem, s1, s2, s3 = widths
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.layer1 = self._make_stage(stem, s1, n_blocks, stride=1)
        self.layer2 = self._make_stage(s1, s2, n_blocks, stride=2)
        self.layer3 = self._make_stage(s2, s3, n_blocks, stride=2)
        self.fc = nn.Linear(s3, num_classes)
        self.num_features = s3
        init_conv_bn_(self, linear="default")

    @staticmethod
    def _make_stage(in_ch: int, out_ch: int, n_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_ch, out_ch, stride)]
        blocks += [BasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

# name -> (depth, widths); the RepDistiller/mdistiller names.
_SPECS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, _NARROW),
    "resnet14": (14, _NARROW),
    "resnet20": (20, _NARROW),
    "resnet32": (32, _NARROW),
    "resnet44": (44, _NARROW),
    "resnet56": (56, _NARROW),
    "resnet110": (110, _NARROW),
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


def _factory(depth: int, widths: tuple[int, int, int, int]) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return ResNetCifar(depth, widths, num_classes)

    return build


MODELS: dict[str, Callable[[int], nn.Module]] = {
    name: _factory(depth, widths) for name, (depth, widths) in _SPECS.items()
}
