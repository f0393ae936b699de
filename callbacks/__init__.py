"""Lightning callbacks of impress-lightning (installed as the top-level ``callbacks`` package)."""

from callbacks.freeze import FreezeImpressions
from callbacks.reporting import LoggedSaveConfigCallback, report_retention
from callbacks.retention import RetentionEvaluator
from callbacks.task_checkpoint import TaskCheckpoint
from callbacks.task_inference import TaskInferenceEvaluator

__all__ = ["FreezeImpressions", "LoggedSaveConfigCallback", "RetentionEvaluator", "TaskCheckpoint",
           "TaskInferenceEvaluator", "report_retention"]
