"""Backbones: LeNet-300-100, FC-1024-1024, GEM ResNet-18, and any torchvision classifier via conversion."""

from impress_lightning.backbones.gem_resnet import GEMResNet18
from impress_lightning.backbones.mlp import fc1024, lenet_300_100, mlp
from impress_lightning.backbones.registry import available_backbones, build_backbone, plain_backbone

__all__ = ["GEMResNet18", "available_backbones", "build_backbone", "fc1024", "lenet_300_100", "mlp",
           "plain_backbone"]
