"""Lightning callbacks of impress-lightning (installed as the top-level ``callbacks`` package)."""

from callbacks.freeze import FreezeImpressions
from callbacks.reporting import LoggedSaveConfigCallback, report_retention
from callbacks.retention import RetentionEvaluator

__all__ = ["FreezeImpressions", "LoggedSaveConfigCallback", "RetentionEvaluator", "report_retention"]
