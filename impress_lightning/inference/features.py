"""Feature matching: which task's own data does a batch look like, in that task's own first-layer features?

Every learned task has a *signature*: the mean, over its own held-out examples, of the features its own
weights give the second masked layer as input (the first layer's output after its nonlinearity; conv nets:
one mean per channel). A batch is scored against task t by the relative distance between its features under
t's weights and t's signature. Tasks 10° apart classify almost alike, so confidence (entropy) barely tells
them apart, while their first-layer features differ in every unit (docs/task_inference.md, measured).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from impress_lightning.nn import Dense, SupermaskNet


class FeatureProbe:
    """Records, during every forward pass of ``net`` inside the ``with`` block, the per-channel mean of the
    second masked layer's input (``last``: a ``[C]`` tensor), without changing the pass."""

    def __init__(self, net: SupermaskNet) -> None:
        if len(net.layers) < 2:
            raise ValueError("feature matching reads the input of the second masked layer: the network has "
                             f"{len(net.layers)} masked layer(s)")
        self.layer: nn.Module = net.layers[1]
        self.last: Tensor | None = None
        self._handle: Any = None

    def _record(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        features = inputs[0].detach()
        dims = [d for d in range(features.dim()) if d != 1]
        self.last = features.double().mean(dim=dims)

    def __enter__(self) -> FeatureProbe:
        self._handle = self.layer.register_forward_pre_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def feature_distance(features: Tensor, signature: Tensor) -> Tensor:
    """Relative distance ``‖features − signature‖ / ‖signature‖`` over the last dimension (one per row when
    both are ``[T, C]``); smaller = likelier the signature's task."""
    if features.shape != signature.shape:
        raise ValueError(f"features {tuple(features.shape)} and signature {tuple(signature.shape)} must match: a "
                         "signature comes from the same network's second masked layer")
    return (features - signature).norm(dim=-1) / signature.norm(dim=-1).clamp_min(1e-12)


class _Captured(Exception):
    """Stops a forward pass once the first masked layer's input is recorded (nothing after it is needed)."""


def first_layer_input(net: SupermaskNet, x: Tensor) -> Tensor:
    """What the first masked layer receives for batch ``x`` (e.g. the flattened images of an MLP)."""
    seen: list[Tensor] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        seen.append(inputs[0])
        raise _Captured

    handle = net.layers[0].register_forward_pre_hook(record)
    try:
        net(x, Dense())
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def impression_outputs(net: SupermaskNet, x: Tensor, n: int) -> Tensor:
    """``[n, B, C, S]``: the first masked layer's output for batch ``x`` under each of the first ``n`` bank
    masks alone (S: the spatial positions of a conv layer, 1 for a linear one)."""
    layer, inputs = net.layers[0], first_layer_input(net, x)
    outs = torch.stack([layer.apply_weight(inputs, layer.weight * layer.bank.mask(k, layer.weight.dtype))
                        for k in range(n)])
    return outs.flatten(3) if outs.dim() > 3 else outs.unsqueeze(-1)


def task_features(outs: Tensor, first_coeffs: Tensor, chunk: int = 32) -> Tensor:
    """``[T, C]``: every task's feature means (what :class:`FeatureProbe` records under its weights) from
    :func:`impression_outputs`, for networks whose second masked layer reads ``relu(first layer)`` (the MLPs;
    checked by the caller).

    The first layer is linear in its weight and a combination's weight is ``W ⊙ Σ_k α_k M_k``, so its output for
    task t is ``Σ_k α_{t,k} · out_k`` (α per layer, or one row per output channel): K passes of the first layer
    serve every task, then O(T · K · B · C) arithmetic.

    Args:
        first_coeffs: the first layer's coefficients of every task, ``[T, n]`` or ``[T, C, n]``.
    """
    equation = "tk,kbcs->tbcs" if first_coeffs.dim() == 2 else "tck,kbcs->tbcs"
    means = [torch.einsum(equation, rows.to(outs.dtype), outs).relu_().mean(dim=(1, 3))
             for rows in first_coeffs.split(chunk)]
    return torch.cat(means).double()
