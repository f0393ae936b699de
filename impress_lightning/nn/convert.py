"""Turn any torch model into its supermask form (Linear/Conv2d -> supermask layers, BN -> TaskBatchNorm)."""

from __future__ import annotations

import copy

from torch import nn

from impress_lightning.nn.batchnorm import TaskBatchNorm
from impress_lightning.nn.layers import SupermaskConv2d, SupermaskLinear


def to_supermask(model: nn.Module, *, bank_capacity: int, num_tasks: int, seed: int = 0,
                 inplace: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` by a bias-free supermask layer with signed-constant
    weights, and every ``BatchNorm1d/2d`` by a non-affine :class:`TaskBatchNorm`.

    Layer ``i`` (in ``named_modules`` order) draws its signs from ``seed * 100_003 + i``, so the same
    model, seed and architecture always give the same backbone on every process.

    Args:
        model: a torch model, e.g. ``torchvision.models.resnet50(num_classes=10)``.
        bank_capacity: masks each layer can store (K impressions, or T for SupSup).
        num_tasks: tasks that keep BN statistics.
        seed: backbone seed.
        inplace: modify ``model`` instead of a deep copy.
    """
    model = model if inplace else copy.deepcopy(model)
    index = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = None
            if isinstance(child, nn.Conv2d):
                if child.padding_mode != "zeros":
                    raise ValueError(f"{name}: padding_mode={child.padding_mode!r} is not supported")
                new = SupermaskConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                      child.padding, child.dilation, child.groups, bank_capacity,
                                      seed * 100_003 + index)
            elif isinstance(child, nn.Linear):
                new = SupermaskLinear(child.in_features, child.out_features, bank_capacity, seed * 100_003 + index)
            elif isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, name, TaskBatchNorm(child.num_features, num_tasks, child.momentum or 0.1, child.eps))
                continue
            if new is not None:
                setattr(parent, name, new)
                index += 1
    return model
