"""What a forward pass uses as weights: a *selection* names the mask or the combination, per network.

Selections are explicit values passed to :meth:`SupermaskNet.forward`; no layer holds a "current task".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from impress_lightning.nn.masks import MaskRule


@dataclass(frozen=True)
class LearnMask:
    """Train the layers' score tensors; weights are ``W ⊙ rule(scores)`` (straight-through)."""

    rule: MaskRule


@dataclass(frozen=True)
class Impression:
    """Use the frozen mask in bank slot ``slot`` of every layer: ``W ⊙ M_slot``."""

    slot: int


@dataclass(frozen=True, eq=False)
class Combine:
    """Combine the first ``n`` bank masks: ``W_l ⊙ Σ_k α_l[..., k] M_{k,l}``.

    ``alpha`` is ``[L, n]`` (one row per masked layer), ``[n]`` (one global vector for all layers), or a
    sequence with one tensor per masked layer: ``[n]`` (per layer) or ``[out, n]`` (per output neuron), as a
    :class:`~impress_lightning.nn.coefficients.CombinationRule` lays them out.
    """

    alpha: Tensor | tuple[Tensor, ...]

    def for_layer(self, layer_index: int) -> Tensor:
        """Coefficients of layer ``layer_index``."""
        if isinstance(self.alpha, tuple):
            return self.alpha[layer_index]
        return self.alpha[layer_index] if self.alpha.dim() == 2 else self.alpha

    def tensors(self) -> tuple[Tensor, ...]:
        """Every coefficient tensor this selection reads (for cache tokens)."""
        return self.alpha if isinstance(self.alpha, tuple) else (self.alpha,)


@dataclass(frozen=True, eq=False)
class Masked:
    """Use the given binary ``mask`` (shaped like the layer's weight): ``W ⊙ mask`` (a task's own head mask)."""

    mask: Tensor


@dataclass(frozen=True)
class Layerwise:
    """A different selection for every masked layer: ``parts[l]`` supplies layer l's weight (e.g. a
    combination below a task's own head mask)."""

    parts: tuple["LearnMask | Impression | Combine | Masked | Dense", ...]


@dataclass(frozen=True)
class Dense:
    """The raw signed-constant weights, unmasked (a reference point, not a method)."""


Selection = LearnMask | Impression | Combine | Masked | Layerwise | Dense
