"""Superposition of learned tasks in coefficient space ("K-space").

Every learned task t is a row ``A[t]`` of per-layer coefficients over the bank slots of a
:class:`~impress_lightning.nn.SupermaskNet` (a one-hot row for an impression or dedicated mask, α_t for a
combination task). Because the effective weight is linear in the coefficients,

    Σ_t β_t W ⊙ Σ_k A[t, l, k] M_k  =  W ⊙ Σ_k (Σ_t β_t A[t, l, k]) M_k,

the superposition of all tasks is a single ``Combine`` over the n bank masks: O(n) mask work whatever T.
For ImpressLearn n = K impressions; for SupSup's dedicated masks n = T, so it stays O(T).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from impress_lightning.nn import Combine, SupermaskNet

LogitsFn = Callable[[Tensor], Tensor]


def check_task_coeffs(task_coeffs: Tensor, num_layers: int) -> None:
    """Raise a one-line error unless ``task_coeffs`` is ``[T, L, n]`` (per layer) or ``[T, n]`` (global)."""
    if task_coeffs.dim() not in (2, 3) or task_coeffs.shape[0] < 1 or task_coeffs.shape[-1] < 1:
        raise ValueError(f"task_coeffs must be [T, L, n] or [T, n] with T, n >= 1, got {tuple(task_coeffs.shape)}")
    if task_coeffs.dim() == 3 and task_coeffs.shape[1] != num_layers:
        raise ValueError(f"task_coeffs has {task_coeffs.shape[1]} layer rows but the network has {num_layers} "
                         f"masked layers: pass [T, {num_layers}, n] (or [T, n] for global coefficients)")


def superpose(beta: Tensor, task_coeffs: Tensor) -> Tensor:
    """Coefficients of the superposition ``Σ_t β_t A[t]``: ``[L, n]`` (or ``[n]`` for global ``[T, n]``)."""
    if beta.shape != task_coeffs.shape[:1]:
        raise ValueError(f"beta has shape {tuple(beta.shape)}, expected ({task_coeffs.shape[0]},) (one per task)")
    return (beta.to(task_coeffs.dtype) @ task_coeffs.flatten(1)).view(task_coeffs.shape[1:])


def normalize_rows(task_coeffs: Tensor) -> Tensor:
    """Scale every task's coefficient row (per layer) to unit L1 norm; one-hot rows are unchanged.

    The one-shot score of task t is linear in its row: ``∂obj/∂β_t = Σ_{l,k} A[t,l,k] g_{l,k}`` with
    ``g = ∂obj/∂c`` at the superposition. On a bias-free ReLU net much of ``g`` is the "scale everything
    up" direction, so unnormalised, the task whose α is largest wins (measured on a digits stream:
    combination tasks trained by cross-entropy ended with ‖α_l‖₁ ≈ 2-3 and took every batch of the
    impression tasks). A consequence of the linearity, with or without this: a non-negative mixture of
    impressions scores between its constituents, so it can only win where its per-layer weights sit on
    masks the gradient favours in that layer.
    """
    return task_coeffs / task_coeffs.abs().sum(dim=-1, keepdim=True).clamp_min(1e-12)


def batch_bn(net: SupermaskNet) -> str | None:
    """BN mode for task inference: the batch's own statistics when the net has BN, else nothing."""
    return "batch" if net.bn_names else None


def combination_logits_fn(net: SupermaskNet, x: Tensor) -> LogitsFn:
    """``α ↦ net(x)`` with weights ``Combine(α)`` and batch BN statistics (used to fit a fresh α)."""
    bn = batch_bn(net)
    return lambda alpha: net(x, Combine(alpha), bn_task=bn)


def superposed_logits_fn(net: SupermaskNet, x: Tensor, task_coeffs: Tensor) -> LogitsFn:
    """``β ↦ net(x)`` under the superposition of all tasks in ``task_coeffs`` weighted by β (K-space)."""
    check_task_coeffs(task_coeffs, net.num_layers)
    combined = combination_logits_fn(net, x)
    return lambda beta: combined(superpose(beta, task_coeffs))
