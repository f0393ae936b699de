"""The registry of base datasets, by the name the ``dataset`` option takes."""

from __future__ import annotations

from impress_lightning.data.base import Provider
from impress_lightning.data.cifar import CIFAR10_PROVIDER, CIFAR100_PROVIDER
from impress_lightning.data.digits import DIGITS_PROVIDER
from impress_lightning.data.imagenet import IMAGENET_FOLDER_PROVIDER
from impress_lightning.data.mnist import FASHION_MNIST_PROVIDER, MNIST_PROVIDER

PROVIDERS: dict[str, Provider] = {p.info.name: p for p in (
    DIGITS_PROVIDER, MNIST_PROVIDER, FASHION_MNIST_PROVIDER, CIFAR10_PROVIDER, CIFAR100_PROVIDER,
    IMAGENET_FOLDER_PROVIDER)}


def get_provider(name: str) -> Provider:
    """The provider called ``name``; a one-line error listing the choices otherwise."""
    if name not in PROVIDERS:
        raise ValueError(f"dataset={name!r} is unknown; choose one of {sorted(PROVIDERS)}")
    return PROVIDERS[name]
