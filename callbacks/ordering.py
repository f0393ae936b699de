"""The callbacks a task stream cannot run without, in the order they must run."""

from __future__ import annotations

from typing import Sequence

import lightning as L

from lightning.pytorch.callbacks import ProgressBar

from impress_lightning.callbacks.freeze import FreezeImpressions
from impress_lightning.callbacks.numerics import NonFiniteGuard
from impress_lightning.callbacks.progress import task_progress_bar
from impress_lightning.callbacks.retention import RetentionEvaluator
from impress_lightning.callbacks.task_inference import TaskInferenceEvaluator


def stream_callbacks(existing: Sequence[L.Callback]) -> list[L.Callback]:
    """What ``ImpressLearnModule.configure_callbacks`` returns: ``FreezeImpressions``, ``RetentionEvaluator``
    and any ``TaskInferenceEvaluator``, in that order, reusing the trainer's instances (and so their settings)
    and creating defaults for the missing ones, plus a ``NonFiniteGuard`` (where it runs does not matter: it
    acts after each step). Lightning replaces the trainer's callbacks of these types by this list, so a plain
    ``Trainer`` gets them, and in the right order, whatever the user passed. When the trainer already has the
    three in order, they are not returned (and keep their places among the user's callbacks): only a missing
    guard is.

    Lightning's default progress bar in ``existing`` (the trainer's own list) is swapped in place for the
    task-aware one (``callbacks.progress``): returned here instead, it would be announced as overriding a
    callback the user passed."""
    def first(kind: type) -> L.Callback | None:
        return next((cb for cb in existing if type(cb) is kind), None)

    guard = [] if first(NonFiniteGuard) else [NonFiniteGuard()]
    ordered: list[L.Callback] = [first(FreezeImpressions) or FreezeImpressions(),
                                 first(RetentionEvaluator) or RetentionEvaluator()]
    ordered += [cb for cb in existing if isinstance(cb, TaskInferenceEvaluator)]
    positions = [next((i for i, cb in enumerate(existing) if cb is wanted), None) for wanted in ordered]
    if isinstance(existing, list):
        for i, cb in enumerate(existing):
            bar = task_progress_bar(cb) if isinstance(cb, ProgressBar) else None
            existing[i] = bar or cb
    if None not in positions and positions == sorted(positions):
        return guard  # all there, in order: nothing to replace (and no override notice from Lightning)
    return guard + ordered
