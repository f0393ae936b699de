"""Build a backbone by name, in its supermask form."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from impress_lightning.backbones.gem_resnet import GEMResNet18
from impress_lightning.backbones.mlp import fc1024, lenet_300_100
from impress_lightning.nn.convert import to_supermask

_BUILDERS: dict[str, Callable[[Sequence[int], int], nn.Module]] = {
    "lenet_300_100": lenet_300_100,
    "fc1024": fc1024,
    "gem_resnet18": lambda shape, out: GEMResNet18(out, in_channels=shape[0]),
}
TORCHVISION_PREFIX = "torchvision."


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone` (plus any ``torchvision.<model>``)."""
    return sorted(_BUILDERS) + [f"{TORCHVISION_PREFIX}resnet18", f"{TORCHVISION_PREFIX}resnet50", "..."]


def plain_backbone(name: str, input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """The unmasked torch model called ``name`` (``torchvision.<name>`` for any torchvision classifier)."""
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        model_name = name[len(TORCHVISION_PREFIX):]
        try:
            return torchvision.models.get_model(model_name, weights=None, num_classes=num_outputs)
        except ValueError as err:
            raise ValueError(f"backbone={name!r}: torchvision has no model {model_name!r} ({err})") from None
    if name not in _BUILDERS:
        raise ValueError(f"backbone={name!r} is unknown; choose one of {available_backbones()}")
    return _BUILDERS[name](input_shape, num_outputs)


def build_backbone(name: str, input_shape: Sequence[int], num_outputs: int, *, bank_capacity: int,
                   num_tasks: int, seed: int = 0) -> nn.Module:
    """Backbone ``name`` with supermask layers (signed-constant weights from ``seed``) and per-task BN."""
    return to_supermask(plain_backbone(name, input_shape, num_outputs), bank_capacity=bank_capacity,
                        num_tasks=num_tasks, seed=seed, inplace=True)
