"""ResNet-18 built from residual blocks with 1x1 projection shortcuts, as in the d2l.ai notes."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: ResNet-18 stages: (output channels, residual blocks).
RESNET18_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 2), (512, 2))


class Residual(nn.Module):
    """Two 3x3 convolutions with batch norm plus a shortcut.

    When the block changes the channel count or the resolution, the shortcut is a 1x1
    convolution with the same stride, so that it can be added to the main path.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + identity)


def resnet18_scratch(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> nn.Module:
    """ResNet-18: a 7x7 stem, four stages of two residual blocks, global average pooling."""
    if image_size < 16:
        raise ValueError(f"resnet18_scratch needs image_size >= 16, got {image_size}")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    channels = 64
    for index, (out_channels, num_blocks) in enumerate(RESNET18_STAGES):
        for block in range(num_blocks):
            # The first stage keeps the stem's resolution; later ones halve it in their first block.
            stride = 2 if block == 0 and index > 0 else 1
            layers.append(Residual(channels, out_channels, stride=stride))
            channels = out_channels
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
