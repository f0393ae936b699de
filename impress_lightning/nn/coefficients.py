"""Combination rules: what shape each masked layer's coefficients over the impression bank have.

A combination task stores one flat float vector. A rule cuts it into one view per masked layer:

* :class:`PerLayer` (the paper's default): layer l uses ``α_l ∈ R^n`` (L×n floats per task);
* :class:`Global`: every layer uses the same ``α ∈ R^n`` (n floats per task);
* :class:`PerNeuron`: chosen layers use one row per output neuron (conv: per output channel),
  ``W_l[o] ⊙ Σ_k α_l[o, k] M_{k,l}[o]``; the other layers stay per layer.

The combined weight is linear in every coefficient, which is what task inference's K-space superposition
relies on. A new rule is one subclass that implements :meth:`CombinationRule.layer_shapes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

import torch
from torch import Tensor

Precision = Literal["float32", "float16"]


@dataclass(frozen=True)
class CoefficientSlice:
    """Where one layer's coefficients sit in a task's flat vector: ``flat[offset : offset + numel].view(shape)``."""

    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class CombinationRule:
    """Declares the coefficient shape of every masked layer; subclasses are injected by ``class_path``.

    Args:
        precision: how the finished coefficients are stored: "float32", or "float16" (half the bytes; the
            learned values are rounded to float16 when the task finishes, and evaluation uses the rounded ones).
    """

    def __init__(self, precision: Precision = "float32") -> None:
        if precision not in get_args(Precision):
            raise ValueError(f"precision={precision!r}: use 'float32' or 'float16'")
        self.precision = precision

    def layer_shapes(self, weight_shapes: Sequence[Sequence[int]], n: int) -> list[tuple[int, ...] | int]:
        """Per masked layer, its coefficient shape (ending in n), or the index of an earlier layer whose
        coefficients it shares."""
        raise NotImplementedError

    def layout(self, weight_shapes: Sequence[Sequence[int]], n: int) -> list[CoefficientSlice]:
        """The slice of the flat coefficient vector that every masked layer reads."""
        slices: list[CoefficientSlice] = []
        offset = 0
        for i, shape in enumerate(self.layer_shapes(weight_shapes, n)):
            if isinstance(shape, int):
                if not 0 <= shape < i:
                    raise ValueError(f"{self!r}: layer {i} shares the coefficients of layer {shape}, not an earlier one")
                slices.append(slices[shape])
                continue
            slices.append(CoefficientSlice(offset, tuple(shape)))
            offset += math.prod(shape)
        return slices

    @property
    def bytes_per_value(self) -> int:
        """Bytes one stored coefficient takes."""
        return 2 if self.precision == "float16" else 4

    def round_to_storage(self, values: Tensor) -> Tensor:
        """``values`` as they are stored (float16-rounded for precision "float16"), in their own dtype."""
        return values.half().to(values.dtype) if self.precision == "float16" else values

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class PerLayer(CombinationRule):
    """One coefficient per impression and masked layer (L×n floats per task)."""

    def layer_shapes(self, weight_shapes: Sequence[Sequence[int]], n: int) -> list[tuple[int, ...] | int]:
        return [(n,) for _ in weight_shapes]


class Global(CombinationRule):
    """One coefficient per impression shared by every layer (n floats per task)."""

    def layer_shapes(self, weight_shapes: Sequence[Sequence[int]], n: int) -> list[tuple[int, ...] | int]:
        return [(n,)] + [0 for _ in weight_shapes[1:]]


class PerNeuron(CombinationRule):
    """One coefficient per impression and output neuron (conv: output channel) on the chosen layers; one per
    impression on the others.

    Args:
        layers: indices of the masked layers (negative counts from the head) that get per-neuron
            coefficients; None (the default) means every masked layer.
        precision: "float32" or "float16" storage of the finished coefficients.
    """

    def __init__(self, layers: Sequence[int] | None = None, precision: Precision = "float32") -> None:
        super().__init__(precision)
        if layers is not None and not layers:
            raise ValueError("PerNeuron.layers is empty: name at least one layer (e.g. [0]), null for all, or use "
                             "PerLayer")
        self.layers = None if layers is None else tuple(int(i) for i in layers)

    def layer_shapes(self, weight_shapes: Sequence[Sequence[int]], n: int) -> list[tuple[int, ...] | int]:
        count = len(weight_shapes)
        chosen = set()
        for i in range(count) if self.layers is None else self.layers:
            if not -count <= i < count:
                raise ValueError(f"PerNeuron.layers={list(self.layers or [])}: the network has {count} masked layers "
                                 f"(valid indices {-count}..{count - 1})")
            chosen.add(i % count)
        return [(int(shape[0]), n) if i in chosen else (n,) for i, shape in enumerate(weight_shapes)]


def one_hot_coefficients(slices: Sequence[CoefficientSlice], slot: int, size: int,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """The flat coefficient vector that reproduces impression ``slot`` exactly in every layer."""
    flat = torch.zeros(size, dtype=dtype)
    for piece in slices:
        flat[piece.offset:piece.offset + piece.numel].view(piece.shape)[..., slot] = 1.0
    return flat
