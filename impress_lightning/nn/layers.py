"""Supermask layers: one Linear/Conv2d family with frozen signed-constant weights.

A layer owns its frozen weight (a buffer), the score tensor of the mask being learned, and its impression
bank. :meth:`SupermaskLayer.effective_weight` turns a :mod:`~impress_lightning.nn.selection` into the
weight to use; *which* selection applies is decided by the caller (:class:`SupermaskNet`), never stored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impress_lightning.nn.bank import ImpressionBank
from impress_lightning.nn.combine import CodePlane, build_code_planes, lookup_combine, neuron_combine
from impress_lightning.nn.selection import Combine, Dense, Impression, Layerwise, LearnMask, Masked, Selection


def signed_constant(shape: tuple[int, ...], fan_in: int, seed: int) -> Tensor:
    """``±sqrt(2 / fan_in)`` with random signs drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
    return signs * math.sqrt(2.0 / fan_in)


class SupermaskLayer(nn.Module):
    """Shared behaviour of supermask layers; subclasses only say how the weight is applied.

    Args:
        weight_shape: shape of the frozen weight.
        fan_in: fan-in used for the signed-constant magnitude and the score initialisation.
        bank_capacity: how many frozen masks the layer can store.
        seed: seed of the weight signs (and of the first score initialisation).
    """

    def __init__(self, weight_shape: tuple[int, ...], fan_in: int, bank_capacity: int, seed: int) -> None:
        super().__init__()
        self.fan_in = fan_in
        self.magnitude = math.sqrt(2.0 / fan_in)
        # A buffer, not a Parameter: it can never receive a gradient or be touched by an optimiser.
        self.register_buffer("weight", signed_constant(weight_shape, fan_in, seed))
        self.scores = nn.Parameter(torch.empty(weight_shape))
        self.reset_scores(seed)
        self.bank = ImpressionBank(weight_shape, bank_capacity)
        self._planes: tuple[tuple, list[CodePlane]] | None = None
        # The weight of the forward pass in progress, set and cleared by SupermaskNet (None: `weight`).
        self.weight_in_use: Tensor | None = None

    def reset_scores(self, seed: int) -> None:
        """Re-initialise the scores Kaiming-uniform (a = sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(self.fan_in)
        values = torch.rand(self.scores.shape, generator=gen) * 2 * bound - bound
        with torch.no_grad():
            self.scores.copy_(values.to(self.scores.device))

    def code_planes(self, n: int) -> list[CodePlane]:
        """Lookup codes of the first ``n`` bank masks, rebuilt only when the bank or device changed."""
        key = (n, self.weight.device, self.bank.version_token())
        if self._planes is None or self._planes[0] != key:
            # Never as inference tensors: a cache filled in a `test` loop must still serve the gradient
            # passes of task inference that follow it.
            with torch.inference_mode(False):
                planes = build_code_planes(self.bank.masks(n), (self.weight < 0).flatten())
            self._planes = (key, planes)
        return self._planes[1]

    def effective_weight(self, selection: Selection, layer_index: int) -> Tensor:
        """The weight this layer uses under ``selection`` (``layer_index`` picks per-layer α rows)."""
        if isinstance(selection, LearnMask):
            return selection.rule.masked_weight(self.scores, self.weight)
        if isinstance(selection, Impression):
            return self.weight * self.bank.mask(selection.slot, self.weight.dtype)
        if isinstance(selection, Combine):
            coeffs = selection.for_layer(layer_index)
            planes = self.code_planes(coeffs.shape[-1])
            if coeffs.dim() == 2:  # one row per output neuron
                return neuron_combine(coeffs, self.magnitude, planes, self.weight.shape)
            return lookup_combine(coeffs, self.magnitude, planes, self.weight.shape)
        if isinstance(selection, Masked):
            return self.weight * selection.mask.to(self.weight.dtype)
        if isinstance(selection, Layerwise):
            return self.effective_weight(selection.parts[layer_index], layer_index)
        if isinstance(selection, Dense):
            return self.weight
        raise TypeError(f"unknown selection {selection!r}")

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        # SupermaskNet hands the effective weight in through `weight_in_use` for one forward pass; without
        # it (a plain call, or torch.func.functional_call swapping `weight`) the layer uses `weight`.
        weight = self.weight_in_use
        return self.apply_weight(x, self.weight if weight is None else weight)


class SupermaskLinear(SupermaskLayer):
    """Bias-free linear layer with frozen signed-constant weights ``[out_features, in_features]``."""

    def __init__(self, in_features: int, out_features: int, bank_capacity: int = 0, seed: int = 0) -> None:
        super().__init__((out_features, in_features), in_features, bank_capacity, seed)
        self.in_features, self.out_features = in_features, out_features

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bank={len(self.bank)}/{self.bank.capacity}"


class SupermaskConv2d(SupermaskLayer):
    """Bias-free 2-D convolution with frozen signed-constant weights."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bank_capacity: int = 0,
        seed: int = 0,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        fan_in = in_channels // groups * kh * kw
        super().__init__((out_channels, in_channels // groups, kh, kw), fan_in, bank_capacity, seed)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bank={len(self.bank)}/{self.bank.capacity}")
