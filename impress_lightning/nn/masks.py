"""Mask rules: how a real-valued score tensor becomes a binary supermask.

Both rules use the straight-through estimator: the forward pass returns a hard {0, 1} mask, the backward
pass hands the incoming gradient to the scores unchanged (edge-popup / SupSup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


class _TopKStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitudes: Tensor, k: int) -> Tensor:
        flat = magnitudes.detach().flatten()
        mask = torch.zeros_like(flat)
        if k > 0:
            # sorted=False: we only need the set, and sorting is the slow part of topk.
            mask[flat.topk(k, sorted=False).indices] = 1.0
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _ThresholdStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, threshold: float) -> Tensor:
        return (scores.detach() >= threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def kept_count(numel: int, density: float) -> int:
    """Number of entries a top-k mask of ``density`` keeps in a layer of ``numel`` weights."""
    return int(round(density * numel))


def topk_mask(scores: Tensor, density: float) -> Tensor:
    """Binary mask keeping exactly ``round(density * numel)`` entries of largest |score| (straight-through).

    The ranking is on ``|scores|`` inside the graph (as in edge-popup / SupSup), so the gradient reaching a
    score is ``sign(score) ·`` the gradient of its mask entry: raising a kept weight's importance always
    grows its magnitude.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return _TopKStraightThrough.apply(scores.abs(), kept_count(scores.numel(), density))


def threshold_mask(scores: Tensor, threshold: float = 0.0) -> Tensor:
    """Binary mask keeping the entries with ``score >= threshold`` (SupSup's rule; straight-through)."""
    return _ThresholdStraightThrough.apply(scores, threshold)


def er_density(shape: Sequence[int], scale: float) -> float:
    """Erdős–Rényi density of a layer: ``min(0.5, scale * (c_out + c_in) / (c_out * c_in * kh * kw))``."""
    c_out, c_in = shape[0], shape[1]
    return min(0.5, scale * (c_out + c_in) / float(math.prod(shape)))


@dataclass(frozen=True)
class TopK:
    """Top-k mask rule: keep the fraction ``density`` of each layer's weights with the largest |score|.

    Args:
        density: fraction of weights kept per layer when ``er_scale`` is not set (research code: 0.05-0.25).
        er_scale: if set, per-layer densities follow the ER rule with this knob instead (bigger = denser).
    """

    density: float = 0.1
    er_scale: float | None = None

    def __post_init__(self) -> None:
        if self.er_scale is None and not 0.0 < self.density <= 1.0:
            raise ValueError(f"TopK.density must be in (0, 1], got {self.density}; use e.g. 0.1")
        if self.er_scale is not None and self.er_scale <= 0:
            raise ValueError(f"TopK.er_scale must be > 0, got {self.er_scale}")

    def layer_density(self, weight_shape: Sequence[int]) -> float:
        """Density used for a layer whose weight has ``weight_shape``."""
        return er_density(weight_shape, self.er_scale) if self.er_scale is not None else self.density

    def __call__(self, scores: Tensor) -> Tensor:
        return topk_mask(scores, self.layer_density(scores.shape))


@dataclass(frozen=True)
class Threshold:
    """Threshold mask rule (SupSup's task-inference experiments): keep entries with ``score >= threshold``."""

    threshold: float = 0.0

    def layer_density(self, weight_shape: Sequence[int]) -> float | None:
        """Density is data-dependent for this rule."""
        return None

    def __call__(self, scores: Tensor) -> Tensor:
        return threshold_mask(scores, self.threshold)


MaskRule = TopK | Threshold
