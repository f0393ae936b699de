"""Logits of a task from an exported task bank, written from docs/export.md ("The format, completely") alone.

Deliberately imports nothing of impress-lightning: only torch and the standard library. It covers the MLP
backbones (lenet_300_100, fc1024: Flatten, then bias-free Linear + ReLU, then a bias-free Linear head).
``tests/test_export_spec.py`` checks its logits against the package's.
"""

from __future__ import annotations

import math

import torch

HIDDEN = {"lenet_300_100": [300, 100], "fc1024": [1024, 1024]}


def signed_constant_weight(shape: list[int], fan_in: int, seed: int) -> torch.Tensor:
    """Spec "Frozen weights": signs from torch.randint(0, 2) on a CPU generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1
    return signs * math.sqrt(2.0 / fan_in)


def unpack(row: torch.Tensor, numel: int) -> torch.Tensor:
    """Spec "Bit order": element e of the flattened weight is bit (e mod 8), least significant first, of byte e // 8."""
    bits = (row.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[:numel].to(torch.float32)


def layer_masks(bank: dict, layer: int) -> torch.Tensor:
    """Every impression's mask of ``layer``: float {0, 1} ``[K, *shape]``."""
    shapes = bank["layer_shapes"]
    widths = [(math.prod(s) + 7) // 8 for s in shapes]
    start = sum(widths[:layer])
    rows = bank["masks"][:, start:start + widths[layer]]
    numel = math.prod(shapes[layer])
    return torch.stack([unpack(r, numel) for r in rows]).view(len(rows), *shapes[layer])


def coefficient_shapes(bank: dict) -> list[tuple[int, list[int]]]:
    """Spec "Coefficient layout": per masked layer its (offset, shape) in a task's flat vector."""
    rule, args, k = bank["combination"]["name"], bank["combination"]["args"], bank["masks"].shape[0]
    count = len(bank["layer_shapes"])
    if rule == "Global":
        return [(0, [k])] * count
    chosen = set() if rule == "PerLayer" else (
        set(range(count)) if args.get("layers") is None else {i % count for i in args["layers"]})
    slices, offset = [], 0
    for i, shape in enumerate(bank["layer_shapes"]):
        piece = [shape[0], k] if i in chosen else [k]
        slices.append((offset, piece))
        offset += math.prod(piece)
    return slices


def task_weights(bank: dict, task: int) -> list[torch.Tensor]:
    """Spec "Forward formula": W_l ⊙ M_slot for an impression task, W_l ⊙ Σ_k α_l[..., k] M_{k,l} otherwise,
    and W_last ⊙ H_t on the last layer of a task in ``head_tasks``."""
    seed, slot = bank["seed"], bank["slots"][bank["tasks"].index(task)]
    head_tasks = bank.get("head_tasks", [])
    weights = []
    for i, shape in enumerate(bank["layer_shapes"]):
        weight = signed_constant_weight(shape, math.prod(shape[1:]), seed * 100_003 + i)
        if i == len(bank["layer_shapes"]) - 1 and task in head_tasks:
            head = unpack(bank["head_masks"][head_tasks.index(task)], math.prod(shape)).view(shape)
            weights.append(weight * head)
            continue
        masks = layer_masks(bank, i)
        if slot >= 0:
            weights.append(weight * masks[slot])
            continue
        row = [t for t, s in zip(bank["tasks"], bank["slots"]) if s < 0].index(task)
        flat = bank["coefficients"][row].to(torch.float32)
        offset, piece = coefficient_shapes(bank)[i]
        alpha = flat[offset:offset + math.prod(piece)].view(piece)
        if alpha.dim() == 2:  # one row per output neuron
            weights.append(weight * torch.einsum("ok,ko...->o...", alpha, masks))
        else:
            weights.append(weight * torch.tensordot(alpha, masks, dims=1))
    return weights


def rebuild_logits(bank: dict, x: torch.Tensor, task: int) -> torch.Tensor:
    """Logits (every head output) of learned ``task`` for the normalised batch ``x`` ``[N, *input_shape]``."""
    if bank["backbone"] not in HIDDEN:
        raise ValueError(f"this rebuild covers the MLP backbones only, not {bank['backbone']!r}")
    h = x.flatten(1)
    weights = task_weights(bank, task)
    for i, weight in enumerate(weights):
        h = h @ weight.t()
        if i < len(weights) - 1:
            h = torch.relu(h)
    return h
