"""ShuffleNet V2 1× for 32×32 inputs (Ma et al., "ShuffleNet V2", ECCV 2018) as in the
RepDistiller / mdistiller zoo (``models/ShuffleNetv2.py``, ``ShuffleV2``: stage widths
116/232/464, head 1024, 3/7/3 basic units), layer for layer so their checkpoints load by key.

Stem: 1×1 conv 3→24 (``conv1``, ``bn1``), no pooling. Each stage ``layer1..3`` is one
down-sampling unit (two stride-2 branches, each emitting half the stage width, concatenated)
followed by basic units (channel split in halves; the second half goes through
``1×1 → BN → ReLU → 3×3 depthwise → BN → 1×1 → BN → ReLU`` and is concatenated back), each
unit ending in a 2-group channel shuffle. Head: 1×1 ``conv2`` → ``bn2`` → ReLU, global average
pooling, ``linear``.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import channel_shuffle, global_avg_pool


def _conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=False)


def _depthwise3x3(ch: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, 3, stride, 1, groups=ch, bias=False)


class BasicUnit(nn.Module):
    """Stride-1 unit on ``channels`` inputs: split, transform one half, concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"channels must be even, got {channels}")
        half = channels // 2
        self.conv1 = _conv1x1(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _depthwise3x3(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _conv1x1(half, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.half = half

    def forward(self, x: Tensor) -> Tensor:
        kept, x2 = x[:, : self.half], x[:, self.half :]  # the first half passes unchanged
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class DownUnit(nn.Module):
    """Stride-2 unit: left ``dw3×3/2 → BN → 1×1 → BN → ReLU``, right ``1×1 → BN → ReLU →
    dw3×3/2 → BN → 1×1 → BN → ReLU``, each to ``out_ch // 2`` channels; concat, shuffle."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1 = _depthwise3x3(in_ch, 2)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = _conv1x1(in_ch, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv1x1(in_ch, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _depthwise3x3(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 with per-stage widths, head width and basic-unit counts."""

    def __init__(
        self,
        num_classes: int = 100,
        stage_channels: Sequence[int] = (116, 232, 464),
        head_channels: int = 1024,
        num_units: Sequence[int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        if len(stage_channels) != 3 or len(num_units) != 3:
            raise ValueError("stage_channels and num_units must each list 3 stages")
        if any(c % 2 for c in stage_channels):
            raise ValueError(f"stage_channels must be even, got {tuple(stage_channels)}")
        stem = 24
        self.conv1 = nn.Conv2d(3, stem, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_ch = stem
        stages = []
        for out_ch, n_units in zip(stage_channels, num_units, strict=True):
            units: list[nn.Module] = [DownUnit(in_ch, out_ch)]
            units += [BasicUnit(out_ch) for _ in range(n_units)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _conv1x1(in_ch, head_channels)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.linear = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(F.relu(self.bn2(self.conv2(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.forward_features(x))


def _shuffle_v2(num_classes: int) -> nn.Module:
    return ShuffleNetV2(num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {"ShuffleV2": _shuffle_v2}
