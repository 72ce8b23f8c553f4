"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", 2016) as in the
RepDistiller / mdistiller zoo (``models/wrn.py``), layer for layer so their teacher
checkpoints load by key.

WRN-d-k: depth ``d = 6n + 4``, widen factor ``k``. A 3×3 stem ``conv1`` to 16 channels, three
stages ``block1..3`` (each an ``nn.Sequential`` under ``.layer``) of ``n`` pre-activation
blocks at widths (16k, 32k, 64k) and strides (1, 2, 2), a final ``bn1`` + ReLU, global
average pooling and a linear ``fc``. A block whose shape changes has a 1×1 ``convShortcut``
applied to the *activated* input, as in the reference implementation.
"""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import global_avg_pool, init_conv_bn_


class PreActBlock(nn.Module):
    """Pre-activation block: ``a = relu(bn1(x))``, ``r = conv2(dropout(relu(bn2(conv1(a)))))``;
    output ``x + r`` when the shape is kept, else ``convShortcut(a) + r``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = None  # reference key name, kept for checkpoints
        if in_ch != out_ch or stride != 1:
            self.convShortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class _Stage(nn.Module):
    """A stage of blocks under the attribute ``layer`` (the reference ``NetworkBlock``)."""

    def __init__(
        self, n_blocks: int, in_ch: int, out_ch: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        blocks = [PreActBlock(in_ch, out_ch, stride, drop_rate)]
        blocks += [PreActBlock(out_ch, out_ch, 1, drop_rate) for _ in range(n_blocks - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; ``forward`` returns logits ``(N, num_classes)``."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, …), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n_blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(n_blocks, widths[0], widths[1], 1, drop_rate)
        self.block2 = _Stage(n_blocks, widths[1], widths[2], 2, drop_rate)
        self.block3 = _Stage(n_blocks, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]
        init_conv_bn_(self, linear="zero_bias")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return global_avg_pool(F.relu(self.bn1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _factory(depth: int, widen_factor: int) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return WideResNet(depth, widen_factor, num_classes)

    return build


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "wrn_16_1": _factory(16, 1),
    "wrn_16_2": _factory(16, 2),
    "wrn_40_1": _factory(40, 1),
    "wrn_40_2": _factory(40, 2),
}
