"""Exact top-k selection by magnitude through a radix select on the float bit patterns.

The top-k mask rule keeps the ``k`` entries of largest ``|score|``; at the boundary, equal magnitudes are
kept lowest flat index first (the order of a stable descending sort), so the mask is a function of the scores
alone on every device. ``torch.topk`` leaves that order unspecified and is a partial sort (the slow part of a
mask-learning step); here the k-th largest magnitude is found from histograms instead.

For floats of one sign, the order of the values is the order of their bit patterns read as integers, so
``|x|`` is the pattern with the sign bit cleared. Three histograms (``bincount``) of successive digits of those
integers, each over the entries that share the digits fixed so far, pin down the k-th largest pattern
exactly: one pass over the whole tensor plus passes over ever smaller candidate sets.
"""

from __future__ import annotations

import torch
from torch import Tensor

_INT_OF_FLOAT = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64),
                 torch.float16: (torch.int16, 16), torch.bfloat16: (torch.int16, 16)}
# Smallest magnitude bit pattern of inf/NaN per format (all exponent bits set).
_NON_FINITE_FLOOR = {dtype: int(torch.tensor(float("inf"), dtype=dtype).view(int_dtype))
                     for dtype, (int_dtype, _) in _INT_OF_FLOAT.items()}
_DIGIT_BITS = 11  # 2,048 bins per histogram: three passes cover a float32's 31 magnitude bits
_SELECT_DIRECTLY = 1 << 13  # up to this many entries, kthvalue is quicker than the histograms' fixed cost
NON_FINITE = "mask scores contain inf or NaN: the run diverged; lower the mask optimizer's lr"


def magnitude_bits(scores: Tensor) -> tuple[Tensor, int]:
    """``|scores|`` as non-negative integers of the same order (flattened), and their significant bits."""
    if scores.dtype not in _INT_OF_FLOAT:
        raise TypeError(f"top-k selection needs float scores, got {scores.dtype}")
    int_dtype, width = _INT_OF_FLOAT[scores.dtype]
    sign_cleared = (1 << (width - 1)) - 1
    return scores.detach().contiguous().view(int_dtype).flatten() & sign_cleared, width - 1


def kth_largest(bits: Tensor, significant: int, k: int, forbidden_from: int | None = None) -> tuple[int, int, int]:
    """The k-th largest of the non-negative integers ``bits`` (``1 <= k <= numel``, values below
    ``2**significant``): ``(value, how many of the k largest equal it, how many entries equal it)``.

    ``forbidden_from``: a ValueError is raised when any value is at least this (it must be a multiple of the
    first histogram's bin width, as the inf/NaN floor of a float format is).
    """
    if bits.numel() <= _SELECT_DIRECTLY:
        return _kth_largest_directly(bits, k, forbidden_from)
    shifts = [*range(significant - _DIGIT_BITS, 0, -_DIGIT_BITS), 0]
    candidates, prefix, wanted = bits, 0, k
    for level, shift in enumerate(shifts):
        digits = candidates >> shift
        if level > 0:  # the higher digits are the same for every candidate: drop them
            digits &= (1 << _DIGIT_BITS) - 1
        counts = torch.bincount(digits, minlength=1 << _DIGIT_BITS)
        # Entries in this bin or above it, from the top bin down; the k-th largest lies in the first bin where
        # that total reaches the number still wanted.
        at_or_above = counts.flip(0).cumsum(0)
        if level == 0 and forbidden_from is not None and int(at_or_above[-1 - (forbidden_from >> shift)]):
            raise ValueError(NON_FINITE)
        from_top = int(torch.searchsorted(at_or_above, wanted))
        digit = counts.numel() - 1 - from_top
        in_bin, total = (int(v) for v in torch.stack([counts[digit], at_or_above[from_top]]).tolist())
        wanted -= total - in_bin  # the entries of the higher bins are all among the k largest
        prefix |= digit << shift
        if shift > 0:
            candidates = candidates[digits == digit]
    return prefix, wanted, in_bin


def _kth_largest_directly(bits: Tensor, k: int, forbidden_from: int | None) -> tuple[int, int, int]:
    """:func:`kth_largest` by ``kthvalue`` (quicker than three histograms on a small tensor)."""
    value = int(bits.kthvalue(bits.numel() - k + 1).values)
    if forbidden_from is not None and int(bits.max()) >= forbidden_from:
        raise ValueError(NON_FINITE)
    above, equal = (int(v) for v in torch.stack([(bits > value).sum(), (bits == value).sum()]).tolist())
    return value, k - above, equal


def topk_keep(scores: Tensor, k: int) -> Tensor:
    """Bool mask (shape of ``scores``) of the ``k`` entries of largest ``|score|``, ties lowest index first.

    Raises a ValueError when a score is infinite or NaN (a diverged run).
    """
    bits, significant = magnitude_bits(scores)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    threshold, equal_kept, equal_total = kth_largest(bits, significant, k, _NON_FINITE_FLOOR[scores.dtype])
    if equal_kept == equal_total:
        return (bits >= threshold).view(scores.shape)
    # More entries equal the k-th largest than fit: keep the lowest indices among them.
    keep = bits > threshold
    keep[(bits == threshold).nonzero().flatten()[:equal_kept]] = True
    return keep.view(scores.shape)
