"""Task-inference strategies, written against a logits function so they do not depend on how the
superposition is computed (K-space ``Combine``, an explicit float stack, a test double in float64).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from impress_lightning.inference.superposition import (
    TaskCoeffs, coefficient_distances, displacement_dots, parent_slots, slot_point,
)

LogitsFn = Callable[[Tensor], Tensor]
ScalarFn = Callable[[Tensor], Tensor]
Alpha = Union[Tensor, tuple[Tensor, ...]]  # one tensor, or one per masked layer (what ``Combine`` takes)


def beta_gradient(logits_fn: LogitsFn, beta: Tensor, objective: ScalarFn) -> Tensor:
    """``∂ objective(logits_fn(β)) / ∂β`` at ``beta`` (a fresh leaf; nothing else accumulates gradients)."""
    beta = beta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(logits_fn(beta)), beta)
    return grad


def uniform_beta(num_tasks: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """β_t = 1/T for every task."""
    return torch.full((num_tasks,), 1.0 / num_tasks, dtype=dtype, device=device)


def one_shot(logits_fn: LogitsFn, beta: Tensor, objective: ScalarFn) -> tuple[int, Tensor]:
    """SupSup one-shot: one pass at ``beta`` (usually uniform), pick ``argmin_t ∂objective/∂β_t``.

    Returns the chosen index and the gradient (the per-task scores, smaller = likelier).
    """
    grad = beta_gradient(logits_fn, beta, objective)
    return int(grad.argmin()), grad


def binary(logits_fn: LogitsFn, num_tasks: int, objective: ScalarFn, dtype: torch.dtype,
           device: torch.device | str) -> int:
    """SupSup binary variant: keep the half of the remaining tasks with the smallest gradient (β equal on
    them, zero elsewhere) and repeat until one remains: ``ceil(log2 T)`` passes."""
    remaining = torch.arange(num_tasks, device=device)
    while remaining.numel() > 1:
        beta = torch.zeros(num_tasks, dtype=dtype, device=device)
        beta[remaining] = 1.0 / remaining.numel()
        grad = beta_gradient(logits_fn, beta, objective)[remaining]
        keep = math.ceil(remaining.numel() / 2)
        remaining = remaining[grad.topk(keep, largest=False, sorted=False).indices]
    return int(remaining[0])


def taylor_estimates(combined_fn: Callable[[Alpha], Tensor], task_coeffs: TaskCoeffs, objective: ScalarFn) -> Tensor:
    """``[T]`` first-order estimates of every task's exact objective: for each bank slot k that is some task's
    main impression, one pass at the one-hot point e_k gives the objective and its gradient g_k, and a task
    whose main impression is k gets ``objective(e_k) + <A_t − e_k, g_k>``.

    Unlike the one-shot score (one linearisation at the superposition of all tasks, where a mixture always
    scores between its impressions) each task is linearised next to where it lies, so a combination that
    moved its impression's coefficients the right way ranks above it. Costs one pass per used slot: O(n)
    whatever T for ImpressLearn (n = K), O(T) for dedicated masks.
    """
    parents = parent_slots(task_coeffs)
    estimates = torch.empty(parents.shape, dtype=torch.float64)
    for slot in parents.unique().tolist():
        point = slot_point(task_coeffs, slot)
        leaves = [p.requires_grad_(True) for p in ((point,) if torch.is_tensor(point) else point)]
        value = objective(combined_fn(leaves[0] if torch.is_tensor(point) else tuple(leaves)))
        grads = torch.autograd.grad(value, leaves)
        estimate = value.detach() + displacement_dots(task_coeffs, point if torch.is_tensor(point) else tuple(
            p.detach() for p in leaves), grads[0] if torch.is_tensor(point) else grads)
        mine = (parents == slot).cpu()
        estimates[mine] = estimate.detach().double().cpu()[mine]
    return estimates


def verify(candidates: Sequence[int], logits_of: Callable[[int], Tensor],
           score: Callable[[int, Tensor], Tensor]) -> tuple[int, Tensor, Tensor]:
    """Exact check of a shortlist: each candidate's ``score(candidate, logits)`` on its own logits (its own
    weights, not a superposition). Returns the index into ``candidates`` of the smallest score, that
    candidate's logits and every candidate's score."""
    if not candidates:
        raise ValueError("verify needs at least one candidate task")
    best, best_logits, scores = 0, None, []
    for i, candidate in enumerate(candidates):
        logits = logits_of(candidate)
        scores.append(score(candidate, logits))
        if best_logits is None or scores[-1] < scores[best]:
            best, best_logits = i, logits
    return best, best_logits, torch.stack(scores)


def climb_neighbours(task_coeffs: TaskCoeffs, checked: dict[int, Tensor], best: int, best_logits: Tensor,
                     neighbours: int, logits_of: Callable[[int], Tensor],
                     score: Callable[[int, Tensor], Tensor]) -> tuple[int, Tensor]:
    """Hill climbing from a verified shortlist: check the ``neighbours`` tasks nearest to the best task in
    coefficient space (:func:`coefficient_distances`) that are not checked yet; move to the best of them if
    it scores lower and repeat, else stop.

    Tasks next to each other in a stream (rotations 10° apart) have nearby coefficients and nearly equal
    objectives, so the ranking's error is mostly a neighbour of the true task; the climb repairs it with a
    few exact checks per step, never O(T) of them. ``checked`` (task → exact score, as :func:`verify` scores)
    is updated in place. Returns the best task and its logits.
    """
    while True:
        order = coefficient_distances(task_coeffs, best).argsort(stable=True).tolist()
        fresh = [t for t in order if t not in checked][:neighbours]
        if not fresh:  # every task is checked
            return best, best_logits
        i, logits, scores = verify(fresh, logits_of, score)
        checked.update(zip(fresh, scores))
        if not scores[i] < checked[best]:
            return best, best_logits
        best, best_logits = fresh[i], logits
