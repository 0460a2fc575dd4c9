"""GoogLeNet (Inception v1) built from Inception blocks, as in the d2l.ai notes.

Every convolution is followed by batch norm, as in torchvision's GoogLeNet: without it
this 22-layer network does not start learning from scratch within a few CPU epochs.
"""

from __future__ import annotations

import torch
from torch import nn

#: Inception blocks per stage: (c1, (c2 reduce, c2), (c3 reduce, c3), c4) output channels of
#: the four paths: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1.
InceptionConfig = tuple[int, tuple[int, int], tuple[int, int], int]
GOOGLENET_STAGES: tuple[tuple[InceptionConfig, ...], ...] = (
    ((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64)),
    (
        (192, (96, 208), (16, 48), 64),
        (160, (112, 224), (24, 64), 64),
        (128, (128, 256), (24, 64), 64),
        (112, (144, 288), (32, 64), 64),
        (256, (160, 320), (32, 128), 128),
    ),
    ((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128)),
)


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0
) -> nn.Sequential:
    """Convolution, batch norm, ReLU (the convolution's bias is redundant before batch norm)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class Inception(nn.Module):
    """Four parallel paths whose outputs are concatenated on the channel dimension."""

    def __init__(self, in_channels: int, config: InceptionConfig) -> None:
        super().__init__()
        c1, (c2r, c2), (c3r, c3), c4 = config
        self.p1 = conv_bn(in_channels, c1, 1)
        self.p2 = nn.Sequential(conv_bn(in_channels, c2r, 1), conv_bn(c2r, c2, 3, padding=1))
        self.p3 = nn.Sequential(conv_bn(in_channels, c3r, 1), conv_bn(c3r, c3, 5, padding=2))
        self.p4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1), conv_bn(in_channels, c4, 1))
        self.out_channels = c1 + c2 + c3 + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.p1(x), self.p2(x), self.p3(x), self.p4(x)), dim=1)


def googlenet_scratch(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 64) -> nn.Module:
    """GoogLeNet: a convolutional stem, nine Inception blocks in three stages, global average pooling."""
    if image_size < 16:
        raise ValueError(f"googlenet_scratch needs image_size >= 16, got {image_size}")
    layers: list[nn.Module] = [
        conv_bn(in_channels, 64, 7, stride=2, padding=3),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        conv_bn(64, 64, 1),
        conv_bn(64, 192, 3, padding=1),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    channels = 192
    for index, stage in enumerate(GOOGLENET_STAGES):
        for config in stage:
            block = Inception(channels, config)
            layers.append(block)
            channels = block.out_channels
        if index < len(GOOGLENET_STAGES) - 1:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
