"""Mask rules: how a real-valued score tensor becomes a binary supermask.

Both rules use the straight-through estimator: the forward pass returns a hard {0, 1} mask, the backward
pass hands the incoming gradient to the scores unchanged (edge-popup / SupSup). Mask learning calls
:meth:`MaskRule.masked_weight`, which fuses the mask with the frozen weight it multiplies.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from impress_lightning.nn.select import topk_keep, topk_masked


class _TopKMaskedWeight(torch.autograd.Function):
    """``weight ⊙ topk(|scores|)`` in one step; backward hands ``grad ⊙ weight ⊙ sign(scores)`` to the scores.

    The same values and gradient as ranking ``scores.abs()`` in the graph and multiplying by the float mask
    (the straight-through rule of edge-popup / SupSup), in fewer passes over the layer.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, weight: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(scores, weight)
        return topk_masked(scores, weight, k)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scores, weight = ctx.saved_tensors
        if scores.dtype == weight.dtype == grad.dtype:
            # The same bits as (grad * weight) * sign: the sign factor is exact, so the order does not
            # matter; starting from sign() saves a second full-size allocation.
            return scores.sign().mul_(weight).mul_(grad), None, None
        return grad.mul(weight).mul_(scores.sign()), None, None


class _ThresholdMaskedWeight(torch.autograd.Function):
    """``weight ⊙ (scores >= threshold)``; backward hands ``grad ⊙ weight`` to the scores (straight-through)."""

    @staticmethod
    def forward(ctx, scores: Tensor, weight: Tensor, threshold: float) -> Tensor:
        ctx.save_for_backward(weight)
        # The comparison written straight into a float tensor: a bool result converted to float afterwards
        # (or multiplied in as bool) costs several times more.
        return torch.ge(scores.detach(), threshold, out=torch.empty_like(weight)).mul_(weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        return grad * weight, None, None


class _StraightThrough(torch.autograd.Function):
    """A precomputed mask in the forward pass, the incoming gradient unchanged to the scores."""

    @staticmethod
    def forward(ctx, scores: Tensor, mask: Tensor) -> Tensor:
        return mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def kept_count(numel: int, density: float) -> int:
    """Number of entries a top-k mask of ``density`` keeps in a layer of ``numel`` weights."""
    return int(round(density * numel))


def _checked_count(scores: Tensor, density: float) -> int:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return kept_count(scores.numel(), density)


def topk_mask(scores: Tensor, density: float) -> Tensor:
    """Binary mask keeping exactly ``round(density * numel)`` entries of largest |score| (straight-through);
    equal magnitudes at the boundary are kept lowest index first (:mod:`~impress_lightning.nn.select`).

    The ranking is on ``|scores|`` (as in edge-popup / SupSup), so the gradient reaching a score is
    ``sign(score) ·`` the gradient of its mask entry: raising a kept weight's importance always grows its
    magnitude.
    """
    mask = topk_keep(scores, _checked_count(scores, density)).to(scores.dtype)
    return _StraightThrough.apply(scores.abs(), mask)


def topk_masked_weight(scores: Tensor, weight: Tensor, density: float) -> Tensor:
    """``weight * topk_mask(scores, density)``, values and gradients alike, fused into one step."""
    return _TopKMaskedWeight.apply(scores, weight, _checked_count(scores, density))


def threshold_mask(scores: Tensor, threshold: float = 0.0) -> Tensor:
    """Binary mask keeping the entries with ``score >= threshold`` (SupSup's rule; straight-through)."""
    return _StraightThrough.apply(scores, (scores.detach() >= threshold).to(scores.dtype))


def threshold_masked_weight(scores: Tensor, weight: Tensor, threshold: float = 0.0) -> Tensor:
    """``weight * threshold_mask(scores, threshold)``, values and gradients alike, fused into one step."""
    return _ThresholdMaskedWeight.apply(scores, weight, threshold)


def er_density(shape: Sequence[int], scale: float) -> float:
    """Erdős–Rényi density of a layer: ``min(0.5, scale * (c_out + c_in) / (c_out * c_in * kh * kw))``."""
    c_out, c_in = shape[0], shape[1]
    return min(0.5, scale * (c_out + c_in) / float(math.prod(shape)))


class MaskRule:
    """How a layer's scores become its binary mask; subclasses are injected by ``class_path`` in configs."""

    def layer_density(self, weight_shape: Sequence[int]) -> float | None:
        """Fraction of the weights kept in a layer of ``weight_shape`` (None where it depends on the scores)."""
        raise NotImplementedError

    def __call__(self, scores: Tensor) -> Tensor:
        raise NotImplementedError

    def masked_weight(self, scores: Tensor, weight: Tensor) -> Tensor:
        """``weight * self(scores)`` (what mask learning trains through); rules override it with a fused step."""
        return weight * self(scores)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class TopK(MaskRule):
    """Top-k mask rule: keep the fraction ``density`` of each layer's weights with the largest |score|.

    Args:
        density: fraction of weights kept per layer when ``er_scale`` is not set.
        er_scale: if set, per-layer densities follow the ER rule with this knob instead (bigger = denser).
    """

    def __init__(self, density: float = 0.5, er_scale: float | None = None) -> None:
        if er_scale is None and not 0.0 < density <= 1.0:
            raise ValueError(f"TopK.density must be in (0, 1], got {density}; use e.g. 0.5")
        if er_scale is not None and er_scale <= 0:
            raise ValueError(f"TopK.er_scale must be > 0, got {er_scale}")
        self.density, self.er_scale = float(density), er_scale

    def layer_density(self, weight_shape: Sequence[int]) -> float:
        """Density used for a layer whose weight has ``weight_shape``."""
        return er_density(weight_shape, self.er_scale) if self.er_scale is not None else self.density

    def __call__(self, scores: Tensor) -> Tensor:
        return topk_mask(scores, self.layer_density(scores.shape))

    def masked_weight(self, scores: Tensor, weight: Tensor) -> Tensor:
        return topk_masked_weight(scores, weight, self.layer_density(scores.shape))


class Threshold(MaskRule):
    """Threshold mask rule (SupSup's task-inference experiments): keep entries with ``score >= threshold``.

    Args:
        threshold: scores at or above it are kept.
    """

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)

    def layer_density(self, weight_shape: Sequence[int]) -> float | None:
        """Density is data-dependent for this rule."""
        return None

    def __call__(self, scores: Tensor) -> Tensor:
        return threshold_mask(scores, self.threshold)

    def masked_weight(self, scores: Tensor, weight: Tensor) -> Tensor:
        return threshold_masked_weight(scores, weight, self.threshold)
