"""What happens when a stage starts: the adaptive placement decision, fresh scores, the coefficient start.

Everything here is decided from state every rank holds identically (the bank, the task table, seeded probe
data), and it runs again after a resume at a task's first epoch with the same result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from impress_lightning.nn import Impression, Selection
from impress_lightning.schedule import Stage

if TYPE_CHECKING:
    from impress_lightning.module import ImpressLearnModule


def to_device(batch: Any, trainer: Any) -> Any:
    """Move a batch to the module's device through the datamodule's transfer hooks (normalisation etc.)."""
    dm = trainer.datamodule
    if dm is not None:
        batch = dm.on_before_batch_transfer(batch, 0)
    batch = trainer.strategy.batch_to_device(batch)
    return dm.on_after_batch_transfer(batch, 0) if dm is not None else batch


def probe_batches(module: ImpressLearnModule, task: int, count: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The first ``count`` batches of ``task``'s probe examples (held-out training data: its validation split
    when the datamodule has one), on the module's device."""
    dm = getattr(module.trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "probe_loader"):
        raise ValueError("alpha_start='best_impression', adaptive_bank and hybrid_head need a datamodule with "
                         "probe_loader(task) (TaskSequenceDataModule has one); or set alpha_start='uniform'")
    for i, batch in enumerate(dm.probe_loader(task)):
        if i >= count:
            return
        yield to_device(batch, module.trainer)


@torch.no_grad()
def probe_accuracy(module: ImpressLearnModule, task: int, selections: Sequence[Selection], batches: int,
                   bn_task: int | str | None) -> list[float]:
    """Accuracy of each of ``selections`` on the first ``batches`` batches of ``task``'s probe examples, in
    eval mode (``bn_task`` as in :meth:`SupermaskNet.forward`)."""
    correct, total = torch.zeros(len(selections), dtype=torch.float64), 0
    was_training = module.training
    module.eval()
    for x, y in probe_batches(module, task, batches):
        for i, selection in enumerate(selections):
            logits = module.net(x, selection, bn_task=bn_task)[:, : module.num_classes]
            correct[i] += float((logits.argmax(1) == y).sum())
        total += y.numel()
    module.train(was_training)
    return (correct / max(total, 1)).tolist()


@torch.no_grad()
def held_out_mean(module: ImpressLearnModule, task: int, measure: Callable[[Tensor], Tensor], what: str,
                  batches: int, max_examples: int | None = None) -> Tensor:
    """The example-weighted mean of ``measure(x)`` (a batch mean, float64) over the first ``batches`` batches of
    ``task``'s probe examples, at most ``max_examples`` of them, in eval mode; ``what`` names the quantity in
    the error for a task without probe examples."""
    total, count = None, 0
    was_training = module.training
    module.eval()
    for x, _ in probe_batches(module, task, batches):
        x = x if max_examples is None else x[: max_examples - count]
        part = measure(x) * len(x)
        total = part if total is None else total + part
        count += len(x)
        if max_examples is not None and count >= max_examples:
            break
    module.train(was_training)
    if total is None:
        raise ValueError(f"task {task} has no probe examples to measure its {what} on: give it a validation "
                         "split (data.val_fraction > 0) or training examples")
    return total / count


def held_out_score(module: ImpressLearnModule, task: int, score: Callable[[Tensor, int], Tensor]) -> float:
    """``task``'s mean ``score(logits, num_classes)`` under its own learned weights on the first
    ``probe_batches`` batches of its probe examples: the baseline that calibrated task inference compares the
    task's score with (``TaskInference.calibrate``)."""
    return float(held_out_mean(module, task, lambda x: score(module(x, task), module.num_classes).double(),
                               "baseline", module.hparams.probe_batches))


SIGNATURE_EXAMPLES = 8192  # probe examples a feature signature averages: a whole MNIST validation split


def held_out_features(module: ImpressLearnModule, task: int, max_examples: int) -> Tensor:
    """``task``'s feature signature (:mod:`impress_lightning.inference.features`): the mean of its first-layer
    features under its own weights over the first ``max_examples`` of its probe examples (its whole validation
    split, where that is smaller)."""
    from impress_lightning.inference.features import FeatureProbe

    with FeatureProbe(module.net) as probe:
        def features(x: Tensor) -> Tensor:
            module(x, task)
            return probe.last

        # at most one example per batch is used up, so max_examples batches are always enough
        return held_out_mean(module, task, features, "feature signature", max_examples, max_examples)


def probe_impressions(module: ImpressLearnModule, task: int) -> list[float]:
    """Accuracy of every stored impression, used alone, on ``task``'s probe examples; BN layers normalise
    with the batch's own statistics (the task has none yet)."""
    return probe_accuracy(module, task, [Impression(slot) for slot in range(module.bank_size)],
                          module.hparams.probe_batches, "batch" if module.net.bn_names else None)


def start_stage(module: ImpressLearnModule, stage: Stage) -> None:
    """Prepare ``stage`` at its first epoch: decide a pending task's kind, then reset the scores of an
    impression stage (the last layer's for a head stage) or start the coefficients of a combination stage."""
    table, task = module.table, stage.task
    if stage.kind == "head":
        module.net.layers[-1].reset_scores(module.hparams.seed * 1_000_003 + stage.index * 1009 + 7)
        return
    scores: list[float] | None = None
    if stage.kind == "pending":
        scores = probe_impressions(module, task)
        table.probe_accuracy[task] = max(scores, default=-1.0)
        grow = module.adaptive_bank.becomes_impression(scores, module.bank_size)
        table.place(task, module.bank_size if grow else None)
        stage = module.current_stage  # the schedule now holds the decision
    if stage.kind == "impression":
        for i, layer in enumerate(module.net.layers):
            layer.reset_scores(module.hparams.seed * 1_000_003 + stage.index * 1009 + i)
        return
    n = module.bank_size  # every impression before this task is frozen by now
    if n < 1:
        raise RuntimeError(f"stage {stage.index} combines the stored impressions but the bank is empty: add "
                           "FreezeImpressions to the trainer's callbacks")
    best = None
    if module.hparams.alpha_start == "best_impression":
        scores = probe_impressions(module, task) if scores is None else scores
        table.probe_accuracy[task] = max(scores)
        best = int(torch.tensor(scores).argmax())
    table.start_coefficients(task, n, best)
