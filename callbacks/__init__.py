"""Lightning callbacks of impress-lightning: this top-level ``callbacks/`` folder installs as
``impress_lightning.callbacks`` (setuptools ``package-dir``), so it never shadows a user's own ``callbacks``."""

from impress_lightning.callbacks.freeze import FreezeImpressions
from impress_lightning.callbacks.numerics import NonFiniteError, NonFiniteGuard
from impress_lightning.callbacks.reporting import LoggedSaveConfigCallback, report_retention
from impress_lightning.callbacks.retention import RetentionEvaluator
from impress_lightning.callbacks.task_checkpoint import TaskCheckpoint
from impress_lightning.callbacks.task_inference import TaskInferenceEvaluator

__all__ = ["FreezeImpressions", "LoggedSaveConfigCallback", "NonFiniteError", "NonFiniteGuard", "RetentionEvaluator",
           "TaskCheckpoint", "TaskInferenceEvaluator", "report_retention"]
