"""Lightning callbacks of impress-lightning (installed as the top-level ``callbacks`` package)."""

from callbacks.freeze import FreezeImpressions
from callbacks.retention import RetentionEvaluator

__all__ = ["FreezeImpressions", "RetentionEvaluator"]
