"""The ImpressLearnModule's settings that must fit together, checked with one-line errors."""

from __future__ import annotations

from typing import Literal, get_args

from impress_lightning.hybrid import HybridHead
from impress_lightning.placement import AdaptiveBank
from impress_lightning.schedule import IMPRESSION_SOURCES

AlphaStart = Literal["best_impression", "uniform"]
ALPHA_STARTS: tuple[str, ...] = get_args(AlphaStart)


def check_module_config(source: str, num_tasks: int, num_impressions: int, impression_tasks: list[int] | None,
                        adaptive: AdaptiveBank | None, alpha_start: str, probe_batches: int,
                        hybrid: HybridHead | None) -> None:
    """One-line errors for settings that do not fit together."""
    if source not in IMPRESSION_SOURCES:
        raise ValueError(f"impression_source={source!r}: use one of {list(IMPRESSION_SOURCES)}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if probe_batches < 1:
        raise ValueError(f"probe_batches={probe_batches} must be >= 1")
    if alpha_start not in ALPHA_STARTS:
        raise ValueError(f"alpha_start={alpha_start!r}: use one of {list(ALPHA_STARTS)}")
    if hybrid is not None and source == "supsup":
        raise ValueError("hybrid_head needs combination tasks; impression_source='supsup' has none: drop hybrid_head")
    if (impression_tasks is not None or adaptive is not None) and source != "heterogeneous":
        raise ValueError(f"impression_tasks and adaptive_bank need impression_source='heterogeneous', got {source!r}")
    if source not in ("supsup",) and adaptive is None and impression_tasks is None and num_impressions < 1:
        raise ValueError(f"num_impressions must be >= 1 for impression_source={source!r}")
    if source == "heterogeneous" and adaptive is None and impression_tasks is None and num_impressions > num_tasks:
        raise ValueError(f"num_impressions={num_impressions} > num_tasks={num_tasks}: heterogeneous impressions "
                         "are tasks of the stream; lower num_impressions")
    if impression_tasks is not None and adaptive is None and len(impression_tasks) != num_impressions:
        raise ValueError(f"impression_tasks names {len(impression_tasks)} tasks but num_impressions="
                         f"{num_impressions}: make them agree")
