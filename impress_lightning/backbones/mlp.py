"""Fully connected backbones: LeNet-300-100 and FC-1024-1024."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn


def mlp(input_shape: Sequence[int], hidden: Sequence[int], num_outputs: int) -> nn.Sequential:
    """Flatten, then Linear+ReLU per hidden width, then a Linear head (plain torch; convert to mask it)."""
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out, bias=False), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_outputs, bias=False))
    return nn.Sequential(*layers)


def lenet_300_100(input_shape: Sequence[int], num_outputs: int) -> nn.Sequential:
    """LeNet-300-100: in-300-100-out."""
    return mlp(input_shape, [300, 100], num_outputs)


def fc1024(input_shape: Sequence[int], num_outputs: int) -> nn.Sequential:
    """FC-1024-1024: in-1024-1024-out (SupSup's PermutedMNIST network)."""
    return mlp(input_shape, [1024, 1024], num_outputs)
