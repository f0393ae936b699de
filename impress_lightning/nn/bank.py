"""The impression bank of one layer: up to ``capacity`` frozen binary masks, stored bit-packed."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from impress_lightning.nn.bitpack import pack_bits, packed_size, unpack_bits


class ImpressionBank(nn.Module):
    """Frozen binary masks of one layer, 1 bit per weight.

    Capacity is fixed at construction so that a checkpoint of a partly filled bank loads into a freshly
    built model (state-dict shapes never depend on how far the task stream got).

    Args:
        weight_shape: shape of the layer's weight; every mask has this shape.
        capacity: how many masks the bank can hold (K impressions, or T dedicated SupSup masks).
    """

    def __init__(self, weight_shape: Sequence[int], capacity: int) -> None:
        super().__init__()
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.weight_shape = tuple(weight_shape)
        self.numel = math.prod(self.weight_shape)
        self.capacity = capacity
        self.register_buffer("packed", torch.zeros(capacity, packed_size(self.numel), dtype=torch.uint8))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    def add(self, mask: Tensor) -> int:
        """Freeze ``mask`` (binary, the layer's shape) into the next free slot and return the slot index."""
        if tuple(mask.shape) != self.weight_shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != layer weight shape {self.weight_shape}")
        slot = len(self)
        if slot >= self.capacity:
            raise RuntimeError(f"impression bank is full ({self.capacity} masks); raise its capacity")
        with torch.no_grad():
            self.packed[slot].copy_(pack_bits(mask).to(self.packed.device))
            self.count += 1
        return slot

    def mask(self, slot: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Unpacked mask ``slot`` with the layer's shape, on the bank's device."""
        if not 0 <= slot < len(self):
            raise IndexError(f"impression slot {slot} not stored (bank holds {len(self)})")
        return unpack_bits(self.packed[slot], self.numel).view(self.weight_shape).to(dtype)

    def masks(self, n: int | None = None) -> Tensor:
        """The first ``n`` stored masks (all by default) as a bool tensor ``[n, numel]``."""
        n = len(self) if n is None else n
        if n > len(self):
            raise IndexError(f"asked for {n} masks, bank holds {len(self)}")
        return torch.stack([unpack_bits(self.packed[i], self.numel) for i in range(n)]) if n else \
            torch.zeros(0, self.numel, dtype=torch.bool, device=self.packed.device)

    def stored_bytes(self) -> int:
        """Bytes the stored masks occupy (``ceil(numel/8)`` per mask)."""
        return len(self) * packed_size(self.numel)

    def version_token(self) -> tuple:
        """Changes whenever the stored bits may have changed (add, load_state_dict, device move).

        Read on every forward pass, so it is built from addresses and in-place version counters only (reading
        ``count``'s value would be a device sync) and takes the buffers from ``_buffers`` directly (skipping
        nn.Module's slow attribute fallback)."""
        packed, count = self._buffers["packed"], self._buffers["count"]
        return (packed.data_ptr(), packed._version, count.data_ptr(), count._version)
