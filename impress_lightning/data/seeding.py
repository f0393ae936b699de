"""Seeds derived from a tuple of integers, so every random choice of the data pipeline is a pure function of
(run seed, purpose, task, epoch, ...) and identical on every process and after a resume."""

from __future__ import annotations

import numpy as np
import torch

# Purposes, mixed into every derived seed so that e.g. the shuffle of task 3 never shares a stream with the
# permutation of task 3.
PERMUTATION, CLASS_ORDER, HOLDOUT, SHUFFLE, AUGMENT, PROBE = range(6)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative integer ``keys`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))
