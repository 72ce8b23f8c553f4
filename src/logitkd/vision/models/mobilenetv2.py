"""MobileNetV2 for 32×32 inputs (Sandler et al. 2018), the half-width variant ``mobile_half``
(expansion 6, width multiplier 0.5) of the RepDistiller / mdistiller zoo
(``models/mobilenetv2.py``, registered there as ``MobileNetV2``), layer for layer so their
checkpoints load by key.

Stem ``conv1`` = 3×3 conv stride 2 → BN → ReLU; seven stages ``blocks[0..6]`` of inverted
residuals with settings ``(t, c, n, s)`` = (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2),
(6,96,3,1), (6,160,3,2), (6,320,1,1), widths scaled by 0.5; head ``conv2`` = 1×1 conv to
1280 → BN → ReLU, global average pooling and ``classifier`` = ``Sequential(Linear)``.
Every inverted residual keeps its 1×1 expansion conv, even when ``t = 1`` (as the zoo does).
"""

from collections.abc import Callable

from torch import Tensor, nn

from ._layers import global_avg_pool, init_conv_bn_

# (expands, c, n, s): whether the stage uses the model's expansion ratio t (else 1), output
# channels before the width multiplier, repeats, stride of the first block.
_SETTINGS: tuple[tuple[bool, int, int, int], ...] = (
    (False, 16, 1, 1),
    (True, 24, 2, 1),
    (True, 32, 3, 2),
    (True, 64, 4, 2),
    (True, 96, 3, 1),
    (True, 160, 3, 2),
    (True, 320, 1, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """``conv = [1×1 expand → BN → ReLU → 3×3 depthwise → BN → ReLU → 1×1 project → BN]``;
    output ``x + conv(x)`` when ``stride == 1`` and channels are kept, else ``conv(x)``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with ``expand_ratio`` and ``width_mult``; ``forward`` returns logits."""

    def __init__(
        self, num_classes: int = 100, expand_ratio: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        if expand_ratio < 1 or width_mult <= 0:
            raise ValueError(
                f"expand_ratio must be >= 1 and width_mult > 0, got {expand_ratio}, {width_mult}"
            )
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, stride=2)
        self.blocks = nn.ModuleList()
        for expands, channels, repeats, stride in _SETTINGS:
            out_ch = int(channels * width_mult)
            t = expand_ratio if expands else 1
            stage = []
            for i in range(repeats):
                stage.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*stage))
        last_ch = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, last_ch, 1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(last_ch, num_classes))
        self.num_features = last_ch
        init_conv_bn_(self, linear="normal")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return global_avg_pool(self.conv2(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _mobile_half(num_classes: int) -> nn.Module:
    return MobileNetV2Cifar(num_classes, expand_ratio=6, width_mult=0.5)


MODELS: dict[str, Callable[[int], nn.Module]] = {"MobileNetV2": _mobile_half}
