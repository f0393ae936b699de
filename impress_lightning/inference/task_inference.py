"""Task inference without a task id (METHOD.md §6): the configurable entry point.

Example::

    inference = TaskInference(strategy="shortlist", objective="entropy", shortlist_size=12)
    result = inference.infer(net.eval(), x, task_coeffs, num_classes=10)
    preds = result.logits.argmax(dim=1)          # result.task is the inferred task
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal, Sequence, get_args

import torch
from torch import Tensor

from impress_lightning.inference.features import FeatureProbe, feature_distance, impression_outputs, task_features
from impress_lightning.inference.objectives import ObjectiveName, get_objective, get_score
from impress_lightning.inference.strategies import (
    binary, climb_neighbours, one_shot, taylor_estimates, uniform_beta, verify,
)
from impress_lightning.inference.superposition import (
    TaskCoeffs, check_task_coeffs, combination_logits_fn, normalize_rows, num_rows, superposed_logits_fn, task_row,
)
from impress_lightning.nn import Combine, SupermaskNet

StrategyName = Literal["oneshot", "binary", "shortlist", "exhaustive", "feature_match"]
SuperpositionNorm = Literal["l1", "none"]
ShortlistBy = Literal["taylor", "oneshot"]
CalibrateWhen = Literal["unshared_labels", "always", "never"]
VerifyBy = Literal["objective", "features"]
Classifier = Callable[[Tensor, int], Tensor]
_STRATEGIES: tuple[str, ...] = get_args(StrategyName)


@dataclass(frozen=True)
class InferenceResult:
    """What task inference decided for one batch.

    Attributes:
        task: the inferred task id.
        logits: real-class logits ``[B, num_classes]`` for the whole batch, computed with the inferred task;
            ``logits.argmax(1)`` are the predictions.
        scores: one-shot (and shortlist by one-shot): ``∂objective/∂β_t`` per task at uniform β; shortlist by
            Taylor: the first-order estimate of each task's objective (smaller = likelier, both).
        candidates: shortlist, exhaustive and feature_match: the rows of ``task_coeffs`` scored exactly.
        candidate_scores: each candidate's exact score under its own weights: its objective (less its
            baseline where calibrated) or its feature distance (smaller = likelier).
    """

    task: int
    logits: Tensor
    scores: Tensor | None = None
    candidates: Tensor | None = None
    candidate_scores: Tensor | None = None


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
            objective); ``"feature_match"``: every task's feature distance (``verify_by="features"``'s score)
            computed from K passes of the first layer alone, then the nearest task classifies (one forward):
            the answer of ``exhaustive`` + ``verify_by="features"`` at nearly flat cost in T, for MLPs
            (networks whose second masked layer reads ``relu(first layer)``; refused otherwise). METHOD.md
            §6's other reading, fitting a fresh α on the test batch, was built, measured far below every
            discrete strategy and removed (docs/task_inference.md).
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
        shortlist_neighbours: shortlist (where the ranking is used, m < T): after the exact check, also check
            the winner's this-many nearest unchecked tasks in coefficient space and move to a better one,
            repeating until none is better (a hill climb that repairs the ranking's near misses; each step
            costs this many exact forwards, never O(T)); 0 keeps the shortlist's winner.
        calibrate: shortlist / exhaustive: when to compare tasks by their exact score less their own baseline
            (their mean score on their own held-out examples, ``infer(baselines=...)``) instead of by the raw
            score. ``"unshared_labels"`` (default): where every task has its own labels (GNu, class splits),
            whose heads' confidence differs from task to task (it helps there and loses a little on
            shared-label streams: docs/task_inference.md). ``"always"`` / ``"never"`` fix it. One-shot and
            binary compare gradients, which a per-task constant does not change: they never calibrate.
        verify_by: shortlist / exhaustive: what the exact checks compare. ``"objective"``: each task's exact
            objective (calibrated as above); ``"features"``: how far the batch's first-layer features under the
            task's weights lie from the task's signature, their mean on its own held-out examples
            (``infer(signatures=...)``, :mod:`impress_lightning.inference.features`). The ranking stays the
            objective's Taylor estimate.
        rank_examples: feature_match: every task is first scored on this many leading examples of the batch,
            then the ``shortlist_size`` nearest are scored on all of them and the nearest wins (the per-task
            arithmetic is what grows with T); None scores every task on the whole batch.
    """

    strategy: StrategyName = "oneshot"
    objective: ObjectiveName = "entropy"
    superposition_norm: SuperpositionNorm = "l1"
    num_examples: int | None = None
    shortlist_size: int = 12
    shortlist_by: ShortlistBy = "taylor"
    shortlist_neighbours: int = 2
    calibrate: CalibrateWhen = "unshared_labels"
    verify_by: VerifyBy = "objective"
    rank_examples: int | None = 32

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
        if self.shortlist_neighbours < 0:
            raise ValueError(f"shortlist_neighbours must be >= 0, got {self.shortlist_neighbours}")
        if self.calibrate not in get_args(CalibrateWhen):
            raise ValueError(f"calibrate={self.calibrate!r} is unknown; use one of {list(get_args(CalibrateWhen))}")
        if self.rank_examples is not None and self.rank_examples < 1:
            raise ValueError(f"rank_examples must be >= 1 (or None for the whole batch), got {self.rank_examples}")
        if self.verify_by not in get_args(VerifyBy):
            raise ValueError(f"verify_by={self.verify_by!r} is unknown; use one of {list(get_args(VerifyBy))}")
        if self.verify_by == "features" and (self.strategy not in ("shortlist", "exhaustive")
                                             or self.calibrate == "always"):
            raise ValueError("verify_by='features' replaces the exact checks of 'shortlist' / 'exhaustive' (and "
                             f"needs no calibration); got strategy={self.strategy!r}, calibrate={self.calibrate!r}")
        if self.calibrate == "always" and self.strategy not in ("shortlist", "exhaustive"):
            raise ValueError(f"calibrate='always' shifts the exact checks of 'shortlist' / 'exhaustive'; strategy="
                             f"{self.strategy!r} compares gradients, which a per-task constant does not change")
        if self.shortlist_by not in get_args(ShortlistBy):
            raise ValueError(f"shortlist_by={self.shortlist_by!r} is unknown; use 'taylor' or 'oneshot'")

    @property
    def uses_signatures(self) -> bool:
        """Whether ``infer`` needs every task's feature signature (``signatures=``)."""
        return self.verify_by == "features" or self.strategy == "feature_match"

    def calibrates(self, unshared_labels: bool) -> bool:
        """Whether this method compares tasks against their baselines on a stream with these labels."""
        if self.strategy not in ("shortlist", "exhaustive") or self.verify_by == "features":
            return False
        return self.calibrate == "always" or (self.calibrate == "unshared_labels" and unshared_labels)

    def infer(self, net: SupermaskNet, x: Tensor, task_coeffs: TaskCoeffs, *, num_classes: int | None = None,
              task_ids: Sequence[int] | None = None, classify: Classifier | None = None,
              baselines: Tensor | None = None, unshared_labels: bool = False,
              signatures: Tensor | None = None) -> InferenceResult:
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
            num_classes: real classes = leading head outputs (None: all outputs are real classes).
            task_ids: the task id of each row of ``task_coeffs`` (default ``0..T-1``); used for BN
                statistics and returned as ``result.task``.
            classify: ``(x, task_id) -> logits`` (every head output) of a task through the caller's own (e.g.
                cached) path, used to classify and, by shortlist / exhaustive, to verify candidates; default
                ``net(x, Combine(task_coeffs[row]), bn_task=task_id)``.
            baselines: where this call calibrates (:meth:`calibrates`), ``[T]``: each row's mean exact score on
                its task's own held-out examples (``TaskInferenceEvaluator`` measures them on the probe split).
            unshared_labels: every task has its own label space (GNu), for ``calibrate="unshared_labels"``.
            signatures: with ``verify_by="features"``, ``[T, C]``: each row's feature signature
                (``TaskInferenceEvaluator`` measures them on the probe split).
        """
        check_task_coeffs(task_coeffs, net.num_layers)
        if net.training and net.bn_names:
            raise RuntimeError("task inference needs net.eval(): in training mode classifying with the inferred "
                               "task would update that task's frozen BatchNorm statistics")
        num_tasks = num_rows(task_coeffs)
        ids = list(range(num_tasks)) if task_ids is None else [int(t) for t in task_ids]
        if len(ids) != num_tasks:
            raise ValueError(f"task_ids has {len(ids)} entries for {num_tasks} rows of task_coeffs")
        calibrated = self.calibrates(unshared_labels)
        if calibrated and (baselines is None or tuple(baselines.shape) != (num_tasks,)):
            raise ValueError(f"calibrate={self.calibrate!r} needs baselines here: one score per row of task_coeffs "
                             f"({num_tasks}), got {None if baselines is None else tuple(baselines.shape)}")
        offsets = baselines.detach().double().cpu() if calibrated else torch.zeros(num_tasks, dtype=torch.float64)
        if self.uses_signatures and (signatures is None or signatures.dim() != 2 or signatures.shape[0] != num_tasks):
            raise ValueError(f"feature matching needs signatures: [{num_tasks}, C], one per row of task_coeffs, "
                             f"got {None if signatures is None else tuple(signatures.shape)}")
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
            found = self._choose(net, probe, coeffs, objective, own_logits, num_classes, offsets, signatures)
            row, logits = found.pop("row"), found.pop("logits")
        with torch.no_grad():
            if logits is None or not whole_batch:
                logits = own_logits(x, row)
        return InferenceResult(ids[row], logits[:, :num_classes], **found)

    def _choose(self, net: SupermaskNet, probe: Tensor, coeffs: TaskCoeffs, objective: Callable[[Tensor], Tensor],
                own_logits: Callable[[Tensor, int], Tensor], num_classes: int | None,
                offsets: Tensor, signatures: Tensor | None) -> dict[str, Any]:
        """The chosen row, its logits on ``probe`` where the strategy computed them, and what it scored
        (exact scores and Taylor estimates less ``offsets``, the calibration baselines or zeros)."""
        num_tasks = num_rows(coeffs)
        if self.strategy == "feature_match":
            return self._match_features(net, probe, coeffs, own_logits, signatures)
        if self.strategy == "exhaustive" or (self.strategy == "shortlist" and self.shortlist_size >= num_tasks):
            candidates, scores = torch.arange(num_tasks), None
        elif self.strategy == "shortlist" and self.shortlist_by == "taylor":
            scores = taylor_estimates(combination_logits_fn(net, probe), coeffs, objective) - offsets
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
        plain_score = partial(get_score(self.objective), num_classes=num_classes)
        score = lambda row, logits: plain_score(logits).double() - offsets[row]  # noqa: E731
        logits_of = lambda row: own_logits(probe, row)  # noqa: E731
        features = FeatureProbe(net) if self.verify_by == "features" else None
        if features is not None:  # each check's forward records the batch's features under that task's weights
            reference = signatures.detach().double().to(probe.device)
            score = lambda row, logits: feature_distance(features.last, reference[row]).cpu()  # noqa: E731
        with torch.no_grad(), features or nullcontext():
            best, logits, exact = verify(candidates.tolist(), logits_of, score)
            row = int(candidates[best])
            if scores is not None and self.shortlist_neighbours:
                checked = dict(zip(candidates.tolist(), exact))
                row, logits = climb_neighbours(coeffs, checked, row, logits, self.shortlist_neighbours,
                                               logits_of, score)
                candidates, exact = torch.tensor(list(checked)), torch.stack(list(checked.values()))
        return {"row": row, "logits": logits, "scores": scores, "candidates": candidates, "candidate_scores": exact}

    def _match_features(self, net: SupermaskNet, probe: Tensor, coeffs: TaskCoeffs,
                        own_logits: Callable[[Tensor, int], Tensor], signatures: Tensor) -> dict[str, Any]:
        """``feature_match``: every task's feature distance from the first layer alone (on ``rank_examples`` of
        the batch, then the ``shortlist_size`` nearest on all of it); the nearest task's own forward then
        classifies, and its recorded features must equal the computed ones (else the network is not one this
        shortcut fits, and it says so rather than answer wrongly)."""
        if net.bn_names:
            raise ValueError("strategy='feature_match' computes features from the first layer alone, which a "
                             "network with BatchNorm does not allow: use strategy='exhaustive' with "
                             "verify_by='features'")
        first = (coeffs[0] if not torch.is_tensor(coeffs) else coeffs[:, 0] if coeffs.dim() == 3 else coeffs).detach()
        with torch.no_grad():
            outs = impression_outputs(net, probe, first.shape[-1])
            reference = signatures.detach().double().to(outs.device)
            candidates = torch.arange(num_rows(coeffs), device=outs.device)
            if self.rank_examples is not None and self.rank_examples < len(probe) and \
                    num_rows(coeffs) > self.shortlist_size:  # else scoring every task on the whole batch is as cheap
                ranked = feature_distance(task_features(outs[:, : self.rank_examples], first), reference)
                candidates = ranked.topk(min(self.shortlist_size, len(ranked)), largest=False).indices
            features = task_features(outs, first[candidates])
            distances = feature_distance(features, reference[candidates])
            best = int(distances.argmin())
            row = int(candidates[best])
            with FeatureProbe(net) as recorded:
                logits = own_logits(probe, row)
        if not torch.allclose(recorded.last, features[best], rtol=1e-3, atol=1e-5):
            raise ValueError("strategy='feature_match' assumes the second masked layer reads relu(first layer), "
                             "which this network does not: use strategy='exhaustive' with verify_by='features'")
        return {"row": row, "logits": logits, "candidates": candidates.cpu(), "candidate_scores": distances.cpu()}
