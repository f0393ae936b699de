"""Combined weights ``W ⊙ Σ_k α_k M_k`` through a code lookup table.

For every weight the bits of the K masks (plus the sign of W) form an integer *code*. The combined weight
is then ``table[code]``, where ``table`` holds the 2^(K+1) possible values of ``±c · Σ_k α_k bit_k``. The
forward pass reads one int64 per weight instead of K float masks; the α gradient is a scatter-add of the
weight gradient over the codes followed by a small ``[2^K, K]`` matrix product. Masks are split into
*planes* of at most ``MAX_PLANE_BITS`` impressions so tables stay small; planes add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_PLANE_BITS = 12


@dataclass(frozen=True)
class CodePlane:
    """Codes of masks ``start:stop`` (with the weight sign in bit 0) for every weight of a layer."""

    start: int
    stop: int
    index: Tensor  # int64 [numel]: (Σ_j bit_j << j) << 1 | (weight < 0)
    bit_matrix: Tensor  # float [2^(stop-start), stop-start]: row c = bits of code c


def _bit_matrix(width: int, device: torch.device) -> Tensor:
    codes = torch.arange(2**width, device=device).unsqueeze(1)
    return ((codes >> torch.arange(width, device=device)) & 1).float()


def build_code_planes(masks: Tensor, negative: Tensor, plane_bits: int = MAX_PLANE_BITS) -> list[CodePlane]:
    """Code planes for bool ``masks`` ``[n, numel]`` and the bool sign map ``negative`` ``[numel]``."""
    planes = []
    for start in range(0, masks.shape[0], plane_bits):
        stop = min(start + plane_bits, masks.shape[0])
        code = torch.zeros(masks.shape[1], dtype=torch.int64, device=masks.device)
        for j in range(start, stop):
            code |= masks[j].to(torch.int64) << (j - start)
        index = (code << 1) | negative.to(torch.int64)
        planes.append(CodePlane(start, stop, index, _bit_matrix(stop - start, masks.device)))
    return planes


class _LookupCombine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs: Tensor, magnitude: float, planes: list[CodePlane]) -> Tensor:
        out = None
        for plane in planes:
            sums = plane.bit_matrix.to(coeffs.dtype) @ coeffs[plane.start : plane.stop]
            # index 2c -> +c·sum, index 2c+1 -> -c·sum (the weight sign is bit 0 of the index)
            table = torch.stack([sums, -sums], dim=1).flatten() * magnitude
            value = table.index_select(0, plane.index)
            out = value if out is None else out.add_(value)
        ctx.magnitude, ctx.planes, ctx.n = magnitude, planes, coeffs.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.reshape(-1)
        grad_coeffs = grad.new_zeros(ctx.n)
        for plane in ctx.planes:
            per_code = grad.new_zeros(2 * plane.bit_matrix.shape[0]).scatter_add_(0, plane.index, grad)
            signed = (per_code[0::2] - per_code[1::2]) * ctx.magnitude
            grad_coeffs[plane.start : plane.stop] = plane.bit_matrix.to(signed.dtype).t() @ signed
        return grad_coeffs, None, None


def lookup_combine(coeffs: Tensor, magnitude: float, planes: list[CodePlane], shape: torch.Size) -> Tensor:
    """``W ⊙ Σ_k coeffs[k] M_k`` for a signed-constant W of ``magnitude``, reshaped to ``shape``.

    Differentiable with respect to ``coeffs`` only.
    """
    if not planes or planes[-1].stop != coeffs.shape[0]:
        raise ValueError(f"{coeffs.shape[0]} coefficients for {planes[-1].stop if planes else 0} masks")
    return _LookupCombine.apply(coeffs, magnitude, planes).view(shape)


def neuron_combine(coeffs: Tensor, magnitude: float, planes: list[CodePlane], shape: torch.Size) -> Tensor:
    """``W[o] ⊙ Σ_k coeffs[o, k] M_k[o]`` with one coefficient row per output neuron (``coeffs`` ``[out, n]``).

    Each output row gets its own ``2^(w+1)``-entry table per plane; autograd's gather backward is the
    per-row scatter-add of the weight gradient over the codes.
    """
    if not planes or planes[-1].stop != coeffs.shape[1] or coeffs.shape[0] != shape[0]:
        raise ValueError(f"per-neuron coefficients {tuple(coeffs.shape)} do not fit {shape[0]} outputs x "
                         f"{planes[-1].stop if planes else 0} masks")
    out = None
    for plane in planes:
        sums = coeffs[:, plane.start : plane.stop] @ plane.bit_matrix.to(coeffs.dtype).t()  # [out, 2^w]
        table = torch.stack([sums, -sums], dim=2).flatten(1) * magnitude  # [out, 2^(w+1)]
        value = table.gather(1, plane.index.view(shape[0], -1))
        out = value if out is None else out + value
    return out.view(shape)


def naive_combine(weight: Tensor, masks: Tensor, coeffs: Tensor) -> Tensor:
    """Reference: ``weight * Σ_k coeffs[k] masks[k]`` with masks stacked as floats ``[n, *weight.shape]``;
    per-neuron ``coeffs`` ``[out, n]`` weigh each output row separately."""
    masks = masks.to(weight.dtype)
    if coeffs.dim() == 2:
        return weight * torch.einsum("on,no...->o...", coeffs.to(weight.dtype), masks)
    return weight * torch.tensordot(coeffs, masks, dims=1)
