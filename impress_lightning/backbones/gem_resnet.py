"""The reduced ("GEM") ResNet-18 for 32x32 inputs: widths 20/40/80/160, 3x3 stem, no max-pool."""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class GEMResNet18(nn.Module):
    """ResNet-18 with BasicBlocks [2, 2, 2, 2] at widths nf·(1, 2, 4, 8) (nf = 20): 21 masked layers.

    Args:
        num_outputs: head outputs.
        in_channels: input channels.
        nf: base width.
    """

    def __init__(self, num_outputs: int, in_channels: int = 3, nf: int = 20) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        blocks, in_planes = [], nf
        for i, stride in enumerate([1, 2, 2, 2]):
            planes = nf * 2**i
            blocks += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_outputs, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.relu(self.bn1(self.conv1(x))))
        return self.linear(self.pool(out).flatten(1))
