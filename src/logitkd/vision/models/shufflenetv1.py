"""ShuffleNet V1 for 32×32 inputs (Zhang et al., "ShuffleNet", CVPR 2018) as in the
RepDistiller / mdistiller zoo (``models/ShuffleNetv1.py``, ``ShuffleV1``: g = 3, stage outputs
240/480/960, 4/8/4 units), layer for layer so their checkpoints load by key.

Stem: 1×1 conv 3→24 (``conv1``, ``bn1``), no pooling. Each stage starts with a stride-2 unit
whose residual branch is concatenated with a 3×3 average-pooled input (so the branch emits
``C_out − C_in`` channels), followed by stride-1 units with an identity shortcut. A unit is
``1×1 group conv → BN → ReLU → channel shuffle → 3×3 depthwise (stride s) → BN → 1×1 group
conv → BN``, then ReLU after the merge. The very first unit's first 1×1 conv is not grouped
(its 24 input channels are too few), as in the paper and the reference.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import channel_shuffle, global_avg_pool


class ShuffleUnit(nn.Module):
    """One ShuffleNet V1 unit whose residual branch outputs ``branch_ch`` channels."""

    def __init__(
        self, in_ch: int, branch_ch: int, stride: int, groups: int, first_groups: int
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        mid_ch = branch_ch // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride, 1, groups=mid_ch, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, branch_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_ch)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 with ``groups`` and per-stage ``out_channels`` / ``num_units``."""

    def __init__(
        self,
        num_classes: int = 100,
        out_channels: Sequence[int] = (240, 480, 960),
        num_units: Sequence[int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        if len(out_channels) != 3 or len(num_units) != 3:
            raise ValueError("out_channels and num_units must each list 3 stages")
        stem = 24
        self.conv1 = nn.Conv2d(3, stem, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_ch = stem
        stages = []
        for stage_idx, (out_ch, n_units) in enumerate(zip(out_channels, num_units, strict=True)):
            units = []
            for i in range(n_units):
                first_groups = 1 if stage_idx == 0 and i == 0 else groups
                branch_ch = out_ch - in_ch if i == 0 else out_ch
                units.append(
                    ShuffleUnit(in_ch, branch_ch, 2 if i == 0 else 1, groups, first_groups)
                )
                in_ch = out_ch
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.forward_features(x))


def _shuffle_v1(num_classes: int) -> nn.Module:
    return ShuffleNetV1(num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {"ShuffleV1": _shuffle_v1}
