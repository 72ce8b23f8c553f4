"""ImageNet-style ResNet18 / ResNet50 adapted to 32×32 inputs (He et al. 2016), as in the
RepDistiller / mdistiller zoo (``models/resnetv2.py``), layer for layer so their checkpoints
load by key.

Unlike the ImageNet network, the stem is a single 3×3 stride-1 conv (``conv1``, ``bn1``) with
no max pooling. Four stages ``layer1..4`` at widths 64/128/256/512 (×4 output for bottleneck
blocks) and strides (1, 2, 2, 2), global average pooling and a linear ``linear``. A block that
changes shape has a 1×1 conv + BN ``shortcut``; otherwise the shortcut is identity.
"""

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import global_avg_pool, init_conv_bn_


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """1×1 conv + BN shortcut when the block changes shape, else ``None`` (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
    )


class BasicBlock(nn.Module):
    """``relu(bn2(conv3×3(relu(bn1(conv3×3(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Bottleneck(nn.Module):
    """``1×1 (planes) → 3×3 stride s (planes) → 1×1 (4·planes)``, BN after each, plus shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _projection(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNetCifarImagenetStyle(nn.Module):
    """Four-stage ResNet with ``num_blocks`` per stage; ``forward`` returns logits."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or min(num_blocks) < 1:
            raise ValueError(f"num_blocks must list 4 positive counts, got {tuple(num_blocks)}")
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_ch = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(block(in_ch, planes, stride if i == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        init_conv_bn_(self, linear="default")

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return global_avg_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.forward_features(x))


def _resnet18(num_classes: int) -> nn.Module:
    return ResNetCifarImagenetStyle(BasicBlock, (2, 2, 2, 2), num_classes)


def _resnet50(num_classes: int) -> nn.Module:
    return ResNetCifarImagenetStyle(Bottleneck, (3, 4, 6, 3), num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {"ResNet18": _resnet18, "ResNet50": _resnet50}
