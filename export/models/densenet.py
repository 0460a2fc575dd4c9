"""DenseNet built from dense blocks and transition layers, as in the d2l.ai notes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DenseNetConfig:
    """Layer configuration: convolutions per dense block, each adding ``growth_rate`` channels."""

    num_convs: tuple[int, ...] = (4, 4, 4, 4)
    growth_rate: int = 32
    stem_channels: int = 64


DENSENET_D2L = DenseNetConfig()


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    )


class DenseBlock(nn.Module):
    """Convolutions whose inputs are the concatenation of every earlier output in the block."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            _conv_block(in_channels + i * growth_rate, growth_rate) for i in range(num_convs)
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.net:
            x = torch.cat((x, block(x)), dim=1)
        return x


def transition_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Batch norm, a 1x1 convolution that reduces the channels, and 2x2 average pooling."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


def densenet_scratch(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> nn.Module:
    """DenseNet: a stem, four dense blocks (growth 32) joined by transition layers that halve channels."""
    return _densenet(DENSENET_D2L, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def _densenet(config: DenseNetConfig, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    num_convs, growth_rate, channels = config.num_convs, config.growth_rate, config.stem_channels
    minimum = 4 * 2 ** (len(num_convs) - 1)
    if image_size < minimum:
        raise ValueError(f"densenet_scratch needs image_size >= {minimum}, got {image_size}")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    for index, convs in enumerate(num_convs):
        block = DenseBlock(convs, channels, growth_rate)
        layers.append(block)
        channels = block.out_channels
        if index != len(num_convs) - 1:
            layers.append(transition_block(channels, channels // 2))
            channels //= 2
    layers += [
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    ]
    return nn.Sequential(*layers)
