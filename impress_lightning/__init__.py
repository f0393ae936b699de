"""impress-lightning: continual learning with ImpressLearn supermask impressions on PyTorch Lightning.

Everything a user writes in Python is importable from here::

    from impress_lightning import ImpressLearnModule, RotatedMNIST
    import lightning as L

    module, data = ImpressLearnModule(num_impressions=3), RotatedMNIST(num_tasks=10)
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1)
    trainer.fit(module, datamodule=data)

Names are imported on first use, so ``import impress_lightning`` (and ``impress-lightning --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ImpressLearnModule": "impress_lightning.module",
    "TaskTable": "impress_lightning.tasks",
    "AdaptiveBank": "impress_lightning.placement",
    "HybridHead": "impress_lightning.hybrid",
    "TaskSchedule": "impress_lightning.schedule",
    "TaskBank": "impress_lightning.artifact",
    "TaskBankModel": "impress_lightning.bank_model",
    "load_task_bank": "impress_lightning.bank_model",
    "TaskInference": "impress_lightning.inference",
    "FreezeImpressions": "impress_lightning.callbacks",
    "RetentionEvaluator": "impress_lightning.callbacks",
    "TaskCheckpoint": "impress_lightning.callbacks",
    "TaskInferenceEvaluator": "impress_lightning.callbacks",
    **{name: "impress_lightning.data" for name in (
        "TaskSequenceDataModule", "DatasetTaskSequence", "EmbeddedDigits", "PermutedMNIST", "RotatedMNIST", "SplitMNIST",
        "SplitFashionMNIST", "SplitCIFAR10", "SplitCIFAR100", "SplitImageNet")},
    **{name: "impress_lightning.nn" for name in (
        "TopK", "Threshold", "PerLayer", "Global", "PerNeuron", "SupermaskNet", "to_supermask")},
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'impress_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
