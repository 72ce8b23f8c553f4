"""VGG with batch norm for 32×32 inputs (Simonyan & Zisserman 2015, configurations A/B/D/E plus
the zoo's 8-layer "S"), as in the RepDistiller / mdistiller zoo (``models/vgg.py``,
``vgg*_bn``), layer for layer so their teacher checkpoints load by key.

Five conv blocks ``block0..4`` (each ``[conv3×3(bias) → BN → ReLU]×m`` with the last ReLU
applied outside the block), 2×2 max pooling after blocks 0–2, global average pooling after
block 4 and a single linear ``classifier`` (the big FC layers of ImageNet VGG are removed).
The pooling after block 3 is applied only to 64×64 inputs (Tiny-ImageNet), exactly as in the
reference, so a 32×32 input reaches block 4 at 4×4.
"""

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import global_avg_pool, init_conv_bn_

# Conv widths of the five blocks per configuration (A = VGG11, B = 13, D = 16, E = 19, S = 8).
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_block(widths: Sequence[int], in_ch: int) -> nn.Sequential:
    """``conv → BN → ReLU`` per width, without the final ReLU (indices 0,1,2, 3,4,5, …)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_ch = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN over five blocks of conv widths ``config``; ``forward`` returns logits."""

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        if len(config) != 5 or any(len(block) == 0 for block in config):
            raise ValueError(f"config must list 5 non-empty blocks of conv widths, got {config!r}")
        in_channels = [3] + [block[-1] for block in config[:-1]]
        self.block0 = _make_block(config[0], in_channels[0])
        self.block1 = _make_block(config[1], in_channels[1])
        self.block2 = _make_block(config[2], in_channels[2])
        self.block3 = _make_block(config[3], in_channels[3])
        self.block4 = _make_block(config[4], in_channels[4])
        self.classifier = nn.Linear(config[4][-1], num_classes)
        self.num_features = config[4][-1]
        init_conv_bn_(self, linear="normal")

    def forward_features(self, x: Tensor) -> Tensor:
        pool_after_block3 = x.shape[2] == 64  # the reference's Tiny-ImageNet rule
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if pool_after_block3:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        return global_avg_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _factory(config: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return VGG(_CONFIGS[config], num_classes)

    return build


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "vgg8": _factory("S"),
    "vgg11": _factory("A"),
    "vgg13": _factory("B"),
    "vgg16": _factory("D"),
    "vgg19": _factory("E"),
}
