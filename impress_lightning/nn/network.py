"""SupermaskNet: runs any backbone made of supermask layers under an explicit selection."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from impress_lightning.nn.batchnorm import TaskBatchNorm
from impress_lightning.nn.layers import SupermaskLayer
from impress_lightning.nn.selection import Combine, Impression, Layerwise, Masked, Selection


class SupermaskNet(nn.Module):
    """Wraps a backbone whose Linear/Conv2d are :class:`SupermaskLayer` and whose BNs are
    :class:`TaskBatchNorm`, and runs it with the weights a selection names.

    Args:
        body: the backbone (build one in :mod:`impress_lightning.backbones` or with :func:`to_supermask`).
        cache_size: how many finished tasks' effective weights to keep materialised for evaluation.
    """

    def __init__(self, body: nn.Module, cache_size: int = 2) -> None:
        super().__init__()
        self.body = body
        self.cache_size = cache_size
        masked = [(n, m) for n, m in body.named_modules() if isinstance(m, SupermaskLayer)]
        norms = [(n, m) for n, m in body.named_modules() if isinstance(m, TaskBatchNorm)]
        if not masked:
            raise ValueError("the backbone has no SupermaskLayer; convert it with to_supermask() first")
        self.layer_names, self.bn_names = [n for n, _ in masked], [n for n, _ in norms]
        # Plain lists (not registered again): resolved once here rather than by walking the module tree on
        # every forward. Device moves and state loading act on these same module objects in place.
        self._layers: list[SupermaskLayer] = [m for _, m in masked]
        self._banks = [m.bank for m in self._layers]  # read by every cached forward's token
        self._batchnorms: list[TaskBatchNorm] = [m for _, m in norms]
        self._cache: OrderedDict[object, tuple[tuple, list[Tensor]]] = OrderedDict()

    @property
    def layers(self) -> list[SupermaskLayer]:
        """The masked layers, in registration order (the order of per-layer α rows)."""
        return self._layers

    @property
    def batchnorms(self) -> list[TaskBatchNorm]:
        return self._batchnorms

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def effective_weights(self, selection: Selection) -> list[Tensor]:
        """One effective weight per masked layer (differentiable w.r.t. scores or α)."""
        return [layer.effective_weight(selection, i) for i, layer in enumerate(self.layers)]

    def _cache_token(self, selection: Selection) -> tuple:
        # Built on every cached forward: attributes are read past nn.Module.__getattr__ (~1 µs each), which
        # made the token a visible share of a small network's evaluation batch.
        weight = self._layers[0]._buffers["weight"]
        banks = (weight.dtype, weight.device, *(bank.version_token() for bank in self._banks))
        return (*_selection_token(selection), banks)

    def cached_weights(self, key: object, selection: Selection) -> list[Tensor]:
        """Effective weights for ``selection``, materialised once and reused while nothing they depend on
        (α values, bank contents, device) has changed. ``key`` names the entry (e.g. the task id)."""
        token = self._cache_token(selection)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == token:
            self._cache.move_to_end(key)
            return hit[1]
        with torch.no_grad():
            weights = self.effective_weights(selection)
        self._cache[key] = (token, weights)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return weights

    def clear_cache(self) -> None:
        """Drop every materialised weight."""
        self._cache.clear()

    def forward(self, x: Tensor, selection: Selection, bn_task: int | str | None = None,
                cache_key: object | None = None) -> Tensor:
        """Run the backbone on ``x`` with the weights of ``selection``.

        Args:
            x: input batch.
            selection: which mask / combination supplies the weights.
            bn_task: whose BN statistics to use (and update in training mode); required with BN layers.
                ``"batch"`` normalises with the batch's own statistics and updates nothing (task inference).
            cache_key: if given and no gradient is being recorded, reuse materialised weights under this key.
        """
        if cache_key is not None and not torch.is_grad_enabled():
            weights = self.cached_weights(cache_key, selection)
        else:
            weights = self.effective_weights(selection)
        use_stats = bool(self.batchnorms) and bn_task != "batch"
        if use_stats and not isinstance(bn_task, int):
            raise ValueError(f"this backbone has per-task BatchNorm: pass bn_task=<task id> or 'batch', "
                             f"got {bn_task!r}")
        # The layers read their weights (and the BNs their statistics) from attributes set for this one
        # pass: far cheaper than torch.func.functional_call re-binding every tensor by name, whose cost was
        # a visible share of a small network's step (docs/benchmarks.md). They are plain attributes (never
        # parameters or buffers), so they are set past nn.Module.__setattr__'s registry checks (~4 µs each).
        try:
            for layer, weight in zip(self.layers, weights):
                _set_plain(layer, "weight_in_use", weight)
            if use_stats:
                for bn in self.batchnorms:
                    _set_plain(bn, "stats_in_use", bn.stats_for(bn_task))
            return self.body(x)
        finally:
            for layer in self.layers:
                _set_plain(layer, "weight_in_use", None)
            for bn in self.batchnorms:
                _set_plain(bn, "stats_in_use", None)


_set_plain = object.__setattr__


def _selection_token(selection: Selection) -> tuple:
    """What a finished task's weights depend on besides the banks: in-place version counters and addresses
    of its coefficient / mask tensors (no device sync; optimiser steps and load_state_dict change them)."""
    if isinstance(selection, Combine):
        return ("combine", *((a.data_ptr(), a._version, tuple(a.shape)) for a in selection.tensors()))
    if isinstance(selection, Impression):
        return ("impression", selection.slot)
    if isinstance(selection, Masked):
        return ("masked", selection.mask.data_ptr(), selection.mask._version, tuple(selection.mask.shape))
    if isinstance(selection, Layerwise):
        return ("layerwise", *(_selection_token(part) for part in selection.parts))
    raise ValueError(f"only finished tasks (Impression, Combine, Masked, Layerwise) can be cached, got {selection!r}")
