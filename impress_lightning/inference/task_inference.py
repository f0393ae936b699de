"""Task inference without a task id (METHOD.md §6): the configurable entry point.

Example::

    inference = TaskInference(strategy="shortlist", objective="entropy", shortlist_size=12)
    result = inference.infer(net.eval(), x, task_coeffs, num_classes=10)
    preds = result.logits.argmax(dim=1)          # result.task is the inferred task (None for α-fit)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal, Sequence, get_args

import torch
from torch import Tensor

from impress_lightning.inference.objectives import ObjectiveName, get_objective, get_score
from impress_lightning.inference.strategies import (
    OptimizerName, binary, fit_alpha, one_shot, taylor_estimates, uniform_beta, verify,
)
from impress_lightning.inference.superposition import (
    TaskCoeffs, batch_bn, check_task_coeffs, combination_logits_fn, normalize_rows, num_rows, superposed_logits_fn,
    task_row,
)
from impress_lightning.nn import Combine, SupermaskNet

StrategyName = Literal["oneshot", "binary", "shortlist", "exhaustive", "alpha_fit"]
SuperpositionNorm = Literal["l1", "none"]
ShortlistBy = Literal["taylor", "oneshot"]
AlphaFitGranularity = Literal["per_layer", "global"]
Classifier = Callable[[Tensor, int], Tensor]
_STRATEGIES: tuple[str, ...] = get_args(StrategyName)


@dataclass(frozen=True)
class InferenceResult:
    """What task inference decided for one batch.

    Attributes:
        task: the inferred task id, or None for α-fit (which makes no discrete choice).
        logits: real-class logits ``[B, num_classes]`` for the whole batch, computed with the inferred task
            (its refined coefficients with ``refine_steps``, or the fitted α); ``logits.argmax(1)`` are the
            predictions.
        scores: one-shot (and shortlist by one-shot): ``∂objective/∂β_t`` per task at uniform β; shortlist by
            Taylor: the first-order estimate of each task's objective (smaller = likelier, both).
        candidates: shortlist and exhaustive: the rows of ``task_coeffs`` whose exact objective was computed.
        candidate_scores: the exact objective of each candidate under its own weights (smaller = likelier).
        alpha: α-fit: the fitted coefficients (``[L, n]`` or ``[n]``); with ``refine_steps``: the chosen task's
            refined coefficients (one tensor per layer where ``task_coeffs`` is per layer).
    """

    task: int | None
    logits: Tensor
    scores: Tensor | None = None
    candidates: Tensor | None = None
    candidate_scores: Tensor | None = None
    alpha: Tensor | tuple[Tensor, ...] | None = None


@dataclass
class TaskInference:
    """How to infer the task of a test batch when no task id is given.

    Args:
        strategy: ``"oneshot"``: SupSup one-shot, β_t = 1/T, pick argmin_t ∂objective/∂β_t (over the K-space
            superposition, so it costs O(n) mask work with n bank slots: K for ImpressLearn, T for SupSup);
            ``"binary"``: SupSup's halving variant (ceil(log2 T) passes); ``"shortlist"``: rank every task
            cheaply (``shortlist_by``), then verify the ``shortlist_size`` best by their exact objective under
            their own weights; the smallest wins (O(n + m) passes: flat in T for ImpressLearn, and it can pick
            combination tasks, which one-shot's linear score cannot);
            ``"exhaustive"``: the exact objective of every task (T forwards; the accuracy upper bound of the
            objective); ``"alpha_fit"``: fit a fresh α from 1/n on the batch and classify with it (no discrete
            task).
        objective: ``"entropy"`` (H, mean softmax entropy over the real classes) or ``"superfluous"``
            (G, needs a head with ``extra_outputs > 0`` never-labelled outputs; exact checks then compare the
            softmax mass on those outputs).
        superposition_norm: one-shot / binary / shortlist: ``"l1"`` scales each task's per-layer row to unit
            L1 norm before superposing (one-hot rows, hence SupSup, are unchanged; combination tasks then
            cannot win by the size of their α alone) or ``"none"`` (superpose the stored α's as they are).
        num_examples: how many leading examples of the batch drive the inference (1 ... batch); None = the
            whole batch. The whole batch is always classified.
        shortlist_size: shortlist: how many of the best-ranked candidates are verified (m >= 1). Where m >= T
            every task is checked and the ranking is skipped (the exhaustive search, T forwards).
        shortlist_by: shortlist: how tasks are ranked. ``"taylor"``: a first-order estimate of every task's
            exact objective, linearised at its main impression (one pass per bank slot in use: K for
            ImpressLearn, T for dedicated masks); ``"oneshot"``: the one-shot gradient (one pass; measured
            to miss combination tasks, whose linear score lies between their impressions').
        refine_steps: discrete strategies: after the choice, this many α-fit steps (``alpha_fit_lr``,
            ``alpha_fit_optimizer``, ``alpha_fit_reg``) on the objective refine the chosen task's coefficients
            on the batch before it is classified; 0 classifies with the stored coefficients.
        alpha_fit_steps: α-fit: optimiser steps (0 = classify with the uniform α = 1/n).
        alpha_fit_lr: α-fit and refinement: learning rate.
        alpha_fit_optimizer: α-fit and refinement: ``"adam"`` or ``"sgd"``.
        alpha_fit_granularity: α-fit: ``"per_layer"`` (an ``[L, n]`` α, the module's default) or
            ``"global"`` (one ``[n]`` vector for every layer).
        alpha_fit_reg: α-fit and refinement: weight λ of the ``Σ_rows (‖α_row‖₁ − 1)²`` regulariser. Without
            it the objective is lowered mostly by scaling α up (bias-free ReLU nets: same predictions, sharper
            softmax), and Adam then moves every coordinate alike.
    """

    strategy: StrategyName = "oneshot"
    objective: ObjectiveName = "entropy"
    superposition_norm: SuperpositionNorm = "l1"
    num_examples: int | None = None
    shortlist_size: int = 12
    shortlist_by: ShortlistBy = "taylor"
    refine_steps: int = 0
    alpha_fit_steps: int = 10
    alpha_fit_lr: float = 0.1
    alpha_fit_optimizer: OptimizerName = "adam"
    alpha_fit_granularity: AlphaFitGranularity = "per_layer"
    alpha_fit_reg: float = 1.0

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is unknown; choose one of {list(_STRATEGIES)}")
        get_objective(self.objective)  # validates the name
        if self.superposition_norm not in get_args(SuperpositionNorm):
            raise ValueError(f"superposition_norm={self.superposition_norm!r} is unknown; use 'l1' or 'none'")
        if self.num_examples is not None and self.num_examples < 1:
            raise ValueError(f"num_examples must be >= 1 (or None for the whole batch), got {self.num_examples}")
        if self.shortlist_size < 1:
            raise ValueError(f"shortlist_size must be >= 1, got {self.shortlist_size}")
        if self.shortlist_by not in get_args(ShortlistBy):
            raise ValueError(f"shortlist_by={self.shortlist_by!r} is unknown; use 'taylor' or 'oneshot'")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if self.refine_steps and self.strategy == "alpha_fit":
            raise ValueError("refine_steps refines a chosen task; strategy='alpha_fit' chooses none: use "
                             "alpha_fit_steps (or another strategy)")
        if self.alpha_fit_steps < 0:
            raise ValueError(f"alpha_fit_steps must be >= 0, got {self.alpha_fit_steps}")
        if self.alpha_fit_lr <= 0:
            raise ValueError(f"alpha_fit_lr must be > 0, got {self.alpha_fit_lr}")
        if self.alpha_fit_optimizer not in get_args(OptimizerName):
            raise ValueError(f"alpha_fit_optimizer={self.alpha_fit_optimizer!r} is unknown; use 'adam' or 'sgd'")
        if self.alpha_fit_granularity not in get_args(AlphaFitGranularity):
            raise ValueError(f"alpha_fit_granularity={self.alpha_fit_granularity!r} is unknown; "
                             f"use 'per_layer' or 'global'")
        if self.alpha_fit_reg < 0:
            raise ValueError(f"alpha_fit_reg must be >= 0, got {self.alpha_fit_reg}")

    def infer(self, net: SupermaskNet, x: Tensor, task_coeffs: TaskCoeffs, *, num_classes: int | None = None,
              task_ids: Sequence[int] | None = None, classify: Classifier | None = None) -> InferenceResult:
        """Infer the task of batch ``x`` among the learned tasks and classify the whole batch with it.

        Works under ``torch.inference_mode()`` / ``no_grad`` (Lightning's eval loops): the gradient passes
        re-enable autograd locally. Nothing in ``net`` is modified.

        Args:
            net: the supermask network, in eval mode if it has BatchNorm (the superposed pass uses batch
                statistics; the chosen task then classifies with its own frozen statistics).
            x: one test batch (assumed to come from a single task, as in SupSup).
            task_coeffs: coefficients of every learned task over the bank slots, ``[T, L, n]`` (or ``[T, n]``
                global), or one tensor per masked layer (``[T, n]`` or ``[T, out, n]``, the task table's
                ``kspace_rows``); row t is a one-hot for an impression / dedicated mask, α_t for a combination task.
                α-fit only uses n (it fits over the same n bank masks).
            num_classes: real classes = leading head outputs (None: all outputs are real classes).
            task_ids: the task id of each row of ``task_coeffs`` (default ``0..T-1``); used for BN
                statistics and returned as ``result.task``.
            classify: ``(x, task_id) -> logits`` (every head output) of a task through the caller's own (e.g.
                cached) path, used to classify and, by shortlist / exhaustive, to verify candidates; default
                ``net(x, Combine(task_coeffs[row]), bn_task=task_id)``.
        """
        check_task_coeffs(task_coeffs, net.num_layers)
        if net.training and net.bn_names:
            raise RuntimeError("task inference needs net.eval(): in training mode classifying with the inferred "
                               "task would update that task's frozen BatchNorm statistics")
        num_tasks = num_rows(task_coeffs)
        ids = list(range(num_tasks)) if task_ids is None else [int(t) for t in task_ids]
        if len(ids) != num_tasks:
            raise ValueError(f"task_ids has {len(ids)} entries for {num_tasks} rows of task_coeffs")
        objective = partial(get_objective(self.objective), num_classes=num_classes)
        whole_batch = self.num_examples is None or self.num_examples >= len(x)

        def own_logits(batch: Tensor, row: int) -> Tensor:  # a task's exact logits (the caller's cached path)
            if classify is not None:
                return classify(batch, ids[row])
            return net(batch, Combine(task_row(task_coeffs, row)), bn_task=ids[row] if net.bn_names else None)

        with torch.inference_mode(False), torch.enable_grad():
            # Clones turn Lightning's inference tensors into ordinary ones that autograd may save.
            probe = x[: self.num_examples].clone()
            coeffs = task_coeffs.detach().clone() if torch.is_tensor(task_coeffs) else \
                tuple(r.detach().clone() for r in task_coeffs)
            if self.strategy == "alpha_fit":
                alpha = self._fit(net, probe, coeffs, objective)
                with torch.no_grad():
                    logits = net(x, Combine(alpha), bn_task=batch_bn(net))
                return InferenceResult(None, logits[:, :num_classes], alpha=alpha)
            found = self._choose(net, probe, coeffs, objective, own_logits, num_classes)
            row, logits = found.pop("row"), found.pop("logits")
            if self.refine_steps:
                found["alpha"] = fit_alpha(combination_logits_fn(net, probe), task_row(coeffs, row), objective,
                                           self.refine_steps, self.alpha_fit_lr, self.alpha_fit_optimizer,
                                           self.alpha_fit_reg)
        with torch.no_grad():
            task = ids[row]
            if self.refine_steps:
                logits = net(x, Combine(found["alpha"]), bn_task=task if net.bn_names else None)
            elif logits is None or not whole_batch:
                logits = own_logits(x, row)
        return InferenceResult(task, logits[:, :num_classes], **found)

    def _choose(self, net: SupermaskNet, probe: Tensor, coeffs: TaskCoeffs, objective: Callable[[Tensor], Tensor],
                own_logits: Callable[[Tensor, int], Tensor], num_classes: int | None) -> dict[str, Any]:
        """The chosen row, its logits on ``probe`` where the strategy computed them, and what it scored."""
        num_tasks = num_rows(coeffs)
        if self.strategy == "exhaustive" or (self.strategy == "shortlist" and self.shortlist_size >= num_tasks):
            candidates, scores = torch.arange(num_tasks), None
        elif self.strategy == "shortlist" and self.shortlist_by == "taylor":
            scores = taylor_estimates(combination_logits_fn(net, probe), coeffs, objective)
            candidates = scores.topk(min(self.shortlist_size, num_tasks), largest=False).indices
        else:
            rows = normalize_rows(coeffs) if self.superposition_norm == "l1" else coeffs
            logits_fn = superposed_logits_fn(net, probe, rows)
            ref = rows if torch.is_tensor(rows) else rows[0]
            if self.strategy == "binary":
                return {"row": binary(logits_fn, num_tasks, objective, ref.dtype, ref.device), "logits": None}
            row, scores = one_shot(logits_fn, uniform_beta(num_tasks, ref.dtype, ref.device), objective)
            if self.strategy == "oneshot":
                return {"row": row, "logits": None, "scores": scores}
            candidates = scores.topk(min(self.shortlist_size, num_tasks), largest=False).indices.cpu()
        score = partial(get_score(self.objective), num_classes=num_classes)
        with torch.no_grad():
            best, logits, exact = verify(candidates.tolist(), lambda row: own_logits(probe, row), score)
        return {"row": int(candidates[best]), "logits": logits, "scores": scores, "candidates": candidates,
                "candidate_scores": exact}

    def _fit(self, net: SupermaskNet, probe: Tensor, coeffs: TaskCoeffs,
             objective: Callable[[Tensor], Tensor]) -> Tensor:
        ref = coeffs if torch.is_tensor(coeffs) else coeffs[0]
        n = ref.shape[-1]
        shape = (net.num_layers, n) if self.alpha_fit_granularity == "per_layer" else (n,)
        init = torch.full(shape, 1.0 / n, dtype=ref.dtype, device=ref.device)
        return fit_alpha(combination_logits_fn(net, probe), init, objective, self.alpha_fit_steps,
                         self.alpha_fit_lr, self.alpha_fit_optimizer, self.alpha_fit_reg)
