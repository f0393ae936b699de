"""Supermask building blocks (no Lightning here): masks, layers, the impression bank, per-task BN."""

from impress_lightning.nn.bank import ImpressionBank
from impress_lightning.nn.batchnorm import TaskBatchNorm
from impress_lightning.nn.bitpack import pack_bits, packed_size, unpack_bits
from impress_lightning.nn.coefficients import (
    CoefficientSlice, CombinationRule, Global, PerLayer, PerNeuron, one_hot_coefficients,
)
from impress_lightning.nn.combine import lookup_combine, naive_combine, neuron_combine
from impress_lightning.nn.convert import to_supermask
from impress_lightning.nn.layers import SupermaskConv2d, SupermaskLayer, SupermaskLinear, signed_constant
from impress_lightning.nn.masks import MaskRule, Threshold, TopK, er_density, threshold_mask, topk_mask
from impress_lightning.nn.network import SupermaskNet
from impress_lightning.nn.selection import Combine, Dense, Impression, Layerwise, LearnMask, Masked, Selection

__all__ = [
    "CoefficientSlice", "CombinationRule", "Global", "PerLayer", "PerNeuron", "neuron_combine",
    "one_hot_coefficients", "Combine", "Dense", "Impression", "ImpressionBank", "Layerwise", "LearnMask", "Masked", "MaskRule", "Selection", "SupermaskConv2d",
    "SupermaskLayer", "SupermaskLinear", "SupermaskNet", "TaskBatchNorm", "Threshold", "TopK", "er_density",
    "lookup_combine", "naive_combine", "pack_bits", "packed_size", "signed_constant", "threshold_mask",
    "to_supermask", "topk_mask", "unpack_bits",
]
