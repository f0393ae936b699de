"""Superposition of learned tasks in coefficient space ("K-space").

Every learned task t is a row ``A[t]`` of per-layer coefficients over the bank slots of a
:class:`~impress_lightning.nn.SupermaskNet` (a one-hot row for an impression or dedicated mask, α_t for a
combination task). Because the effective weight is linear in the coefficients,

    Σ_t β_t W ⊙ Σ_k A[t, l, k] M_k  =  W ⊙ Σ_k (Σ_t β_t A[t, l, k]) M_k,

the superposition of all tasks is a single ``Combine`` over the n bank masks: O(n) mask work whatever T.
For ImpressLearn n = K impressions; for SupSup's dedicated masks n = T, so it stays O(T).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

from torch import Tensor

from impress_lightning.nn import Combine, SupermaskNet

LogitsFn = Callable[[Tensor], Tensor]
# Task coefficients: one tensor [T, L, n] (per layer) or [T, n] (global), or, the task table's convention,
# one tensor per masked layer [T, n] (per layer) or [T, out, n] (per output neuron).
TaskCoeffs = Union[Tensor, Sequence[Tensor]]


def check_task_coeffs(task_coeffs: TaskCoeffs, num_layers: int) -> None:
    """Raise a one-line error unless ``task_coeffs`` has one of the shapes of :data:`TaskCoeffs`."""
    if not torch.is_tensor(task_coeffs):
        if len(task_coeffs) != num_layers:
            raise ValueError(f"task_coeffs has {len(task_coeffs)} layer tensors but the network has {num_layers} "
                             "masked layers")
        if len({int(r.shape[0]) for r in task_coeffs}) != 1 or task_coeffs[0].shape[0] < 1 or \
                any(r.dim() not in (2, 3) or r.shape[-1] < 1 for r in task_coeffs):
            raise ValueError("task_coeffs per layer must be [T, n] or [T, out, n] with the same T >= 1, got "
                             f"{[tuple(r.shape) for r in task_coeffs]}")
        return
    if task_coeffs.dim() not in (2, 3) or task_coeffs.shape[0] < 1 or task_coeffs.shape[-1] < 1:
        raise ValueError(f"task_coeffs must be [T, L, n] or [T, n] with T, n >= 1, got {tuple(task_coeffs.shape)}")
    if task_coeffs.dim() == 3 and task_coeffs.shape[1] != num_layers:
        raise ValueError(f"task_coeffs has {task_coeffs.shape[1]} layer rows but the network has {num_layers} "
                         f"masked layers: pass [T, {num_layers}, n] (or [T, n] for global coefficients)")


def num_rows(task_coeffs: TaskCoeffs) -> int:
    """T, the number of tasks in ``task_coeffs``."""
    return int(task_coeffs.shape[0] if torch.is_tensor(task_coeffs) else task_coeffs[0].shape[0])


def task_row(task_coeffs: TaskCoeffs, row: int) -> Tensor | tuple[Tensor, ...]:
    """The coefficients of one task (what ``Combine`` takes)."""
    return task_coeffs[row] if torch.is_tensor(task_coeffs) else tuple(r[row] for r in task_coeffs)


def superpose(beta: Tensor, task_coeffs: TaskCoeffs) -> Tensor | tuple[Tensor, ...]:
    """Coefficients of the superposition ``Σ_t β_t A[t]`` (the shape of one task's coefficients)."""
    if beta.shape != (num_rows(task_coeffs),):
        raise ValueError(f"beta has shape {tuple(beta.shape)}, expected ({num_rows(task_coeffs)},) (one per task)")
    if not torch.is_tensor(task_coeffs):
        return tuple((beta.to(r.dtype) @ r.flatten(1)).view(r.shape[1:]) for r in task_coeffs)
    return (beta.to(task_coeffs.dtype) @ task_coeffs.flatten(1)).view(task_coeffs.shape[1:])


def _layers(task_coeffs: TaskCoeffs) -> tuple[Tensor, ...]:
    return (task_coeffs,) if torch.is_tensor(task_coeffs) else tuple(task_coeffs)


def parent_slots(task_coeffs: TaskCoeffs) -> Tensor:
    """``[T]``: for every task the bank slot with the largest share of its coefficients (the mean over layers
    and rows of ``|α_k| / ‖α‖₁``): an impression task's own slot, a combination task's main impression."""
    layers = _layers(task_coeffs)
    n = layers[0].shape[-1]
    share = sum((r.abs() / r.abs().sum(-1, keepdim=True).clamp_min(1e-12)).reshape(r.shape[0], -1, n).mean(1)
                for r in layers)
    return share.argmax(dim=1)


def slot_point(task_coeffs: TaskCoeffs, slot: int) -> Tensor | tuple[Tensor, ...]:
    """The coefficients, shaped like one task's, that select bank slot ``slot`` alone (one-hot rows)."""
    def one_hot(r: Tensor) -> Tensor:
        point = torch.zeros(r.shape[1:], dtype=r.dtype, device=r.device)
        point[..., slot] = 1.0
        return point

    return one_hot(task_coeffs) if torch.is_tensor(task_coeffs) else tuple(one_hot(r) for r in task_coeffs)


def displacement_dots(task_coeffs: TaskCoeffs, point: Tensor | tuple[Tensor, ...],
                      grads: Tensor | tuple[Tensor, ...]) -> Tensor:
    """``[T]``: ``Σ <A_t − point, grad>`` over every layer's coefficients (first-order change from ``point``)."""
    points, gs = (point,) if torch.is_tensor(point) else point, (grads,) if torch.is_tensor(grads) else grads
    return sum(((r - p.unsqueeze(0)) * g.unsqueeze(0)).reshape(r.shape[0], -1).sum(1)
               for r, p, g in zip(_layers(task_coeffs), points, gs))


def coefficient_distances(task_coeffs: TaskCoeffs, row: int) -> Tensor:
    """``[T]``: how far every task's coefficients lie from task ``row``'s: per layer the mean squared
    difference over that layer's coefficients, summed over layers (so a per-neuron layer with hundreds of rows
    weighs as much as a per-layer one). O(T · coefficients): no T × T table is ever built."""
    return sum((r - r[row].unsqueeze(0)).double().pow(2).reshape(r.shape[0], -1).mean(1)
               for r in _layers(task_coeffs))


def normalize_rows(task_coeffs: TaskCoeffs) -> TaskCoeffs:
    """Scale every task's coefficient row (per layer) to unit L1 norm; one-hot rows are unchanged.

    The one-shot score of task t is linear in its row: ``∂obj/∂β_t = Σ_{l,k} A[t,l,k] g_{l,k}`` with
    ``g = ∂obj/∂c`` at the superposition. On a bias-free ReLU net much of ``g`` is the "scale everything
    up" direction, so unnormalised, the task whose α is largest wins (measured on a digits stream:
    combination tasks trained by cross-entropy ended with ‖α_l‖₁ ≈ 2-3 and took every batch of the
    impression tasks). A consequence of the linearity, with or without this: a non-negative mixture of
    impressions scores between its constituents, so it can only win where its per-layer weights sit on
    masks the gradient favours in that layer.
    """
    if not torch.is_tensor(task_coeffs):
        return tuple(normalize_rows(r) for r in task_coeffs)
    return task_coeffs / task_coeffs.abs().sum(dim=-1, keepdim=True).clamp_min(1e-12)


def batch_bn(net: SupermaskNet) -> str | None:
    """BN mode for task inference: the batch's own statistics when the net has BN, else nothing."""
    return "batch" if net.bn_names else None


def combination_logits_fn(net: SupermaskNet, x: Tensor) -> LogitsFn:
    """``α ↦ net(x)`` with weights ``Combine(α)`` and batch BN statistics (used to fit a fresh α)."""
    bn = batch_bn(net)
    return lambda alpha: net(x, Combine(alpha), bn_task=bn)


def superposed_logits_fn(net: SupermaskNet, x: Tensor, task_coeffs: TaskCoeffs) -> LogitsFn:
    """``β ↦ net(x)`` under the superposition of all tasks in ``task_coeffs`` weighted by β (K-space)."""
    check_task_coeffs(task_coeffs, net.num_layers)
    combined = combination_logits_fn(net, x)
    return lambda beta: combined(superpose(beta, task_coeffs))
