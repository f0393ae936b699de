"""Task-inference objectives: scalar functions of a batch of logits that the right task should make small.

Both take the head's full output ``[B, num_classes + extra_outputs]``; ``num_classes`` says how many of the
leading outputs are real classes (the rest are never-labelled "superfluous" outputs).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

ObjectiveName = Literal["entropy", "superfluous"]
Objective = Callable[[Tensor, "int | None"], Tensor]


def _real_classes(logits: Tensor, num_classes: int | None) -> int:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, outputs], got shape {tuple(logits.shape)}")
    if num_classes is None:
        return logits.shape[1]
    if not 1 <= num_classes <= logits.shape[1]:
        raise ValueError(f"num_classes={num_classes} must be in [1, {logits.shape[1]}] (the head's outputs)")
    return num_classes


def entropy_objective(logits: Tensor, num_classes: int | None = None) -> Tensor:
    """H: mean entropy of ``softmax(logits[:, :num_classes])`` (all outputs when ``num_classes`` is None)."""
    real = logits[:, : _real_classes(logits, num_classes)]
    log_p = real.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def superfluous_objective(logits: Tensor, num_classes: int | None = None) -> Tensor:
    """G ("superfluous neurons"): mean ``logsumexp`` over all outputs with the real-class logits detached.

    Only the extra, never-labelled outputs carry gradient: training pushed them down under the right task's
    weights, so the task whose weight lowers them most is the likeliest one.
    """
    n = _real_classes(logits, num_classes)
    if logits.shape[1] <= n:
        raise ValueError(f"objective='superfluous' needs a head with extra never-labelled outputs, but the head "
                         f"has {logits.shape[1]} outputs for num_classes={n}: set extra_outputs > 0 or use "
                         f"objective='entropy'")
    z = torch.cat([logits[:, :n].detach(), logits[:, n:]], dim=1)
    return z.logsumexp(dim=1).mean()


def superfluous_score(logits: Tensor, num_classes: int | None = None) -> Tensor:
    """G's value for comparing tasks: the mean log-probability mass on the extra, never-labelled outputs.

    ``superfluous_objective``'s own value (a logsumexp over all outputs) grows with the real-class logits, so
    it cannot rank tasks by their exact outputs; training pushed the extra outputs' share of the softmax down
    under the right task's weights, and that share is what this measures (smaller = likelier).
    """
    n = _real_classes(logits, num_classes)
    if logits.shape[1] <= n:
        superfluous_objective(logits, num_classes)  # raises its one-line error
    return (logits[:, n:].logsumexp(dim=1) - logits.logsumexp(dim=1)).mean()


def get_objective(name: str) -> Objective:
    """The objective called ``name`` ("entropy" = H, "superfluous" = G)."""
    objectives: dict[str, Objective] = {"entropy": entropy_objective, "superfluous": superfluous_objective}
    if name not in objectives:
        raise ValueError(f"objective={name!r} is unknown; choose one of {sorted(objectives)}")
    return objectives[name]


def get_score(name: str) -> Objective:
    """How the objective called ``name`` ranks tasks by their exact logits (verification, exhaustive search):
    H itself for "entropy", :func:`superfluous_score` for "superfluous"."""
    get_objective(name)  # validates the name
    return superfluous_score if name == "superfluous" else entropy_objective
