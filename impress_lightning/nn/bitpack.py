"""Bit-packing of binary masks: 1 bit per weight, ``ceil(numel / 8)`` bytes, exact round trip."""

from __future__ import annotations

import torch
from torch import Tensor

# Bit b of a byte holds element 8*i + b (little-endian within the byte).
_BIT_VALUES = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def packed_size(numel: int) -> int:
    """Bytes needed to store ``numel`` bits."""
    return (numel + 7) // 8


def pack_bits(mask: Tensor) -> Tensor:
    """Pack any-shaped binary tensor (bool or {0, 1}) into a flat uint8 tensor of ``ceil(numel/8)`` bytes."""
    flat = mask.detach().flatten().to(torch.bool)
    pad = packed_size(flat.numel()) * 8 - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) * _BIT_VALUES.to(flat.device)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: a flat bool tensor of length ``numel``."""
    values = _BIT_VALUES.to(packed.device)
    bits = (packed.unsqueeze(-1) & values) != 0
    return bits.flatten()[:numel]
