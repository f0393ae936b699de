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

from impress_lightning.nn import SupermaskNet


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
    """Relative distance ``‖features − signature‖ / ‖signature‖`` (smaller = likelier the signature's task)."""
    if features.shape != signature.shape:
        raise ValueError(f"features {tuple(features.shape)} and signature {tuple(signature.shape)} must match: a "
                         "signature comes from the same network's second masked layer")
    return (features - signature).norm() / signature.norm().clamp_min(1e-12)
