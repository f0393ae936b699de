"""Exact top-k selection by magnitude through a radix select on the float bit patterns.

The top-k mask rule keeps the ``k`` entries of largest ``|score|``; at the boundary, equal magnitudes are
kept lowest flat index first (the order of a stable descending sort), so the mask is a function of the scores
alone on every device. ``torch.topk`` leaves that order unspecified and is a partial sort (the slow part of a
mask-learning step); here the k-th largest magnitude is found from histograms instead.

For floats of one sign, the order of the values is the order of their bit patterns read as integers, so
``|x|`` is the pattern with the sign bit cleared. A histogram (``bincount``) of the top bits of those
integers over the whole tensor finds the bin holding the k-th largest; ``kthvalue`` among the few entries in
that bin pins it exactly.

On the CPU, float32 scores go through a compiled kernel instead (``_select_kernel.c``, built by ``pip
install``): the same radix select in two passes over the layer, with bit-identical results. Without it (no C
compiler at install time), or for other devices and formats, the torch operations below run;
:func:`kernel_status` says which, and ``fit`` prints it when the kernel is missing.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

_KERNEL_VERSION = 1  # KERNEL_VERSION in _select_kernel.c
try:
    _select_kernel = importlib.import_module("impress_lightning.nn._select_kernel")
except ModuleNotFoundError:  # built optionally: no C compiler at install time
    _select_kernel, _KERNEL_MISSING = None, "it was not built at install time: no C compiler?"
except ImportError as error:  # built, but not loadable here (e.g. another platform's build)
    _select_kernel, _KERNEL_MISSING = None, f"{type(error).__name__}: {error}"
else:
    _KERNEL_MISSING = ""
    if getattr(_select_kernel, "version", None) != _KERNEL_VERSION:  # an editable install built from older source
        _select_kernel, _KERNEL_MISSING = None, f"a stale build (version {getattr(_select_kernel, 'version', None)})"

_INT_OF_FLOAT = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64),
                 torch.float16: (torch.int16, 16), torch.bfloat16: (torch.int16, 16)}
# Smallest magnitude bit pattern of inf/NaN per format (all exponent bits set).
_NON_FINITE_FLOOR = {dtype: int(torch.tensor(float("inf"), dtype=dtype).view(int_dtype))
                     for dtype, (int_dtype, _) in _INT_OF_FLOAT.items()}
# The histogram takes the top bits of the magnitudes, more of them for larger layers (up to 16: 65,536 bins),
# so that the bin holding the k-th largest keeps only a few thousand candidates while the histogram's fixed
# cost (filling, flipping and summing its bins) stays small next to the pass over the layer.
_MAX_DIGIT_BITS, _MIN_DIGIT_BITS = 16, 11  # at least 11: a float64's inf/NaN floor then falls on a bin edge
_SELECT_DIRECTLY = 1 << 14  # up to this many entries, kthvalue is quicker than the histogram's fixed cost
NON_FINITE = "mask scores contain inf or NaN: the run diverged; lower the mask optimizer's lr"


def _int_view(scores: Tensor) -> tuple[Tensor, int]:
    """The scores' bit patterns as integers (flattened; no copy when contiguous) and the format's width."""
    if scores.dtype not in _INT_OF_FLOAT:
        raise TypeError(f"top-k selection needs float scores, got {scores.dtype}")
    int_dtype, width = _INT_OF_FLOAT[scores.dtype]
    return scores.detach().contiguous().view(int_dtype).flatten(), width


def _locate(counts: Tensor, total: int, wanted: int, forbidden_bin: int) -> tuple[int, int, int]:
    """The bin of a histogram (bins ascending, ``total`` entries) holding the ``wanted``-th largest entry:
    ``(bin, how many of the wanted largest are in it, how many entries it holds)``, read in one host sync.
    Raises NON_FINITE when any entry lies in ``forbidden_bin`` or above."""
    at_or_below = counts.cumsum(0)  # entries in each bin or below it
    # The wanted-th largest is the (total - wanted + 1)-th smallest: in the first bin whose running total
    # reaches that rank.
    found = torch.searchsorted(at_or_below, total - wanted + 1).view(1)
    found, up_to, in_bin, below_forbidden = torch.cat([found, at_or_below.index_select(0, found),
                                                       counts.index_select(0, found),
                                                       at_or_below[forbidden_bin - 1:forbidden_bin]]).tolist()
    if below_forbidden != total:
        raise ValueError(NON_FINITE)
    return found, wanted - (total - up_to), in_bin  # the higher bins' entries are all kept


def _kth_largest(raw: Tensor, magnitudes: Tensor, width: int, k: int, floor: int) -> tuple[int, int | None]:
    """The k-th largest of the ``magnitudes`` (the sign-cleared patterns of ``raw``, ``1 <= k <= numel``) and
    how many of the entries equal to it are among the k largest (None: all of them). NON_FINITE is raised
    when a magnitude is at least ``floor``.

    ``magnitudes`` is overwritten: it is the histogram's scratch space, so the one pass over the whole layer
    allocates nothing.
    """
    if raw.numel() <= _SELECT_DIRECTLY:
        return _kth_largest_directly(magnitudes, k, floor)
    digit_bits = min(max(raw.numel().bit_length() - 4, _MIN_DIGIT_BITS), _MAX_DIGIT_BITS, width - 1)
    shift = width - 1 - digit_bits
    digits = magnitudes.__irshift__(shift)  # the top digits, in place
    # The inf/NaN floor is a multiple of the bin width: the bins from its own up hold exactly the non-finite.
    digit, wanted, in_bin = _locate(torch.bincount(digits, minlength=1 << digit_bits), raw.numel(), k,
                                    floor >> shift)
    if shift == 0:  # the digits were the whole magnitudes (16-bit formats)
        return digit, None if wanted == in_bin else wanted
    # The entries of that bin, their magnitudes re-read from the scores; every entry equal to the k-th
    # largest is among them, so selecting among them alone is exact.
    candidates = raw[digits.eq_(digit).nonzero().flatten()] & ((1 << (width - 1)) - 1)
    return _kth_largest_directly(candidates, wanted, None)


def _kth_largest_directly(bits: Tensor, k: int, forbidden_from: int | None) -> tuple[int, int | None]:
    """:func:`_kth_largest` of small tensors, by ``kthvalue`` (quicker than the histogram there), in
    one host sync unless the boundary splits ties. ``forbidden_from``: NON_FINITE for any value at least this."""
    value = bits.kthvalue(bits.numel() - k + 1).values
    checks = [value, (bits >= value).sum()] + ([bits.max()] if forbidden_from is not None else [])
    value, at_or_above, *top = torch.stack(checks).tolist()
    if top and top[0] >= forbidden_from:
        raise ValueError(NON_FINITE)
    if at_or_above == k:  # the usual case: no tie split at the boundary
        return value, None
    return value, k - int((bits > value).sum())


def _boundary(scores: Tensor, k: int) -> tuple[Tensor, int, int | None]:
    """``(|scores| as integers of the same order (flat), the k-th largest, how many entries equal to it are
    kept (None: all))``. Raises a ValueError when a score is infinite or NaN (a diverged run)."""
    raw, width = _int_view(scores)
    sign_cleared = (1 << (width - 1)) - 1
    work = raw & sign_cleared
    threshold, ties_kept = _kth_largest(raw, work, width, k, _NON_FINITE_FLOOR[scores.dtype])
    return torch.bitwise_and(raw, sign_cleared, out=work), threshold, ties_kept


def _keep(bits: Tensor, threshold: int, ties_kept: int | None) -> Tensor:
    """Bool keep mask (flat): every magnitude above the threshold, and of those equal to it all (``ties_kept``
    None) or the ``ties_kept`` lowest indices."""
    if ties_kept is None:
        return bits >= threshold
    keep = bits > threshold
    keep[(bits == threshold).nonzero().flatten()[:ties_kept]] = True
    return keep


def kernel_loaded() -> bool:
    """Whether CPU float32 selections run through the compiled kernel."""
    return _select_kernel is not None


def kernel_status() -> str:
    """One line saying how CPU float32 top-k selections run: the compiled kernel, or torch ops and why."""
    if kernel_loaded():
        return "top-k selection: compiled CPU kernel (float32 on the CPU; torch ops elsewhere)"
    return (f"top-k selection: torch ops only, the compiled CPU kernel did not load ({_KERNEL_MISSING}); for "
            "faster mask learning on the CPU, rerun pip install -e . with a C compiler present")


def _kernel_applies(scores: Tensor, k: int, weight: Tensor | None = None) -> bool:
    if _select_kernel is None or not 0 < k <= scores.numel() < 1 << 32:  # its histograms count in 32 bits
        return False
    if scores.device.type != "cpu" or scores.dtype != torch.float32:
        return False
    return weight is None or (weight.device.type == "cpu" and weight.dtype == torch.float32
                              and weight.shape == scores.shape)


def _checked(status: int) -> None:
    if status != 0:  # the kernel's only failure status: a score is infinite or NaN
        raise ValueError(NON_FINITE)


def topk_keep(scores: Tensor, k: int) -> Tensor:
    """Bool mask (shape of ``scores``) of the ``k`` entries of largest ``|score|``, ties lowest index first.

    Raises a ValueError when a score is infinite or NaN (a diverged run).
    """
    if not _kernel_applies(scores, k):
        return _torch_topk_keep(scores, k)
    scores = scores.detach().contiguous()
    keep = torch.empty(scores.shape, dtype=torch.bool)
    _checked(_select_kernel.keep(scores.data_ptr(), keep.data_ptr(), scores.numel(), k))
    return keep


def topk_masked(scores: Tensor, weight: Tensor, k: int) -> Tensor:
    """``weight * topk_keep(scores, k)`` (the float product, signed zeros included), in fewer passes."""
    if not _kernel_applies(scores, k, weight):
        return _torch_topk_masked(scores, weight, k)
    scores, weight = scores.detach().contiguous(), weight.detach().contiguous()
    masked = torch.empty(weight.shape, dtype=weight.dtype)
    _checked(_select_kernel.masked(scores.data_ptr(), weight.data_ptr(), masked.data_ptr(), scores.numel(), k))
    return masked


def _torch_topk_keep(scores: Tensor, k: int) -> Tensor:
    """:func:`topk_keep` in torch operations (any device and float format)."""
    if k <= 0:
        _int_view(scores)  # the same TypeError for non-float scores
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return _keep(*_boundary(scores, k)).view(scores.shape)


def _torch_topk_masked(scores: Tensor, weight: Tensor, k: int) -> Tensor:
    """:func:`topk_masked` in torch operations (any device and float format).

    Where the boundary splits no ties, the comparison is written straight into a float tensor, which the
    weight then multiplies in place: no bool mask, no bool-to-float conversion, no second full-size product.
    """
    if k <= 0 or weight.shape != scores.shape:
        return weight * _torch_topk_keep(scores, k).to(weight.dtype)
    bits, threshold, ties_kept = _boundary(scores, k)
    if ties_kept is not None:
        return weight * _keep(bits, threshold, ties_kept).view(scores.shape).to(weight.dtype)
    if weight.dtype.itemsize != bits.element_size():
        kept = torch.ge(bits, threshold, out=torch.empty(bits.shape, dtype=weight.dtype, device=weight.device))
    else:  # into the selection's own scratch tensor: a fresh full-size tensor costs more than the pass
        kept = torch.ge(bits, threshold, out=bits.view(weight.dtype))
    return kept.view(weight.shape).mul_(weight)
