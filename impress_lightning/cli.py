"""The ``impress-lightning`` command: LightningCLI over ImpressLearnModule and TaskSequenceDataModule.

    impress-lightning fit --config configs/quickstart.yaml
    impress-lightning fit --config configs/quickstart.yaml --print_config
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from impress_lightning.callbacks import FreezeImpressions, LoggedSaveConfigCallback, RetentionEvaluator
from impress_lightning.commands import TOOL_MODULES, TRAINER_COMMANDS, top_level_help
from impress_lightning.data import TaskSequenceDataModule
from impress_lightning.module import ImpressLearnModule


class ImpressLightningCLI(LightningCLI):
    """LightningCLI that links what the model needs from the data (never typed twice), always adds the
    impression-freezing and retention callbacks, and sizes the trainer from the task schedule."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (Lightning's ``predict`` is replaced by this package's ``predict`` tool)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in TRAINER_COMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FreezeImpressions, "freeze_impressions")
        parser.add_lightning_class_args(RetentionEvaluator, "retention")
        for field in ("num_tasks", "num_classes", "input_shape"):
            parser.link_arguments(f"data.{field}", f"model.{field}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        # One fit covers every task: each epoch's task picks its loader.
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        config.trainer.reload_dataloaders_every_n_epochs = 1
        self._evaluate_into_subfolder(config)

    def _evaluate_into_subfolder(self, config) -> None:
        """``validate`` / ``test`` of a run whose logger writes straight into the run directory (empty version)
        go to ``<run>/<subcommand>/``, so they never overwrite the fit's config.yaml, metrics or results."""
        logger = config.trainer.get("logger")
        if self.subcommand not in ("validate", "test") or not hasattr(logger, "init_args"):
            return
        if "version" in logger.init_args and logger.init_args.version in ("", None):
            logger.init_args.version = self.subcommand

    def _size_trainer(self) -> None:
        self.trainer.fit_loop.max_epochs = self.model.schedule.total_epochs

    def _protect_run_directory(self) -> None:
        """Refuse to start a fresh run on top of an earlier run's results (resuming is fine)."""
        config = self.config[self.subcommand]
        if config.get("ckpt_path"):
            logger = self.trainer.logger
            if type(logger).__name__ == "WandbLogger" and not config.trainer.logger.init_args.get("id"):
                # A new W&B run id means a new checkpoint folder: "last" would silently start from scratch.
                raise SystemExit("error: resuming with WandbLogger needs the interrupted run's id: add "
                                 "--trainer.logger.init_args.id <run id> (see docs/wandb.md)")
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        earlier = [p.name for p in (run_dir / "checkpoints", run_dir / "retention.json") if p.exists()]
        if config.get("ckpt_path") == "last" and earlier and not self._has_last_checkpoint(run_dir):
            # Lightning would only warn and train from scratch over the earlier run's files.
            raise SystemExit(f"error: --ckpt_path last but {run_dir} holds no last*.ckpt: resume from a file with "
                             "--ckpt_path <file> (e.g. checkpoints/taskNN-*.ckpt), or start elsewhere with "
                             "--trainer.logger.init_args.save_dir <new dir>")
        if config.get("ckpt_path"):
            self._keep_metrics_history(run_dir)
            return
        if earlier:
            raise SystemExit(f"error: run directory {run_dir} already holds {', '.join(earlier)}: resume with "
                             "--ckpt_path last, or start elsewhere with --trainer.logger.init_args.save_dir <new dir>")

    def _keep_metrics_history(self, run_dir: Path) -> None:
        """On resume, CSVLogger would delete the run's metrics.csv: keep it as metrics.before-resume-N.csv."""
        metrics = run_dir / "metrics.csv"
        if not self.trainer.is_global_zero or not metrics.exists():
            return
        n = 1
        while (run_dir / f"metrics.before-resume-{n}.csv").exists():
            n += 1
        metrics.rename(run_dir / f"metrics.before-resume-{n}.csv")

    def _has_last_checkpoint(self, run_dir: Path) -> bool:
        """Whether a ModelCheckpoint folder holds a readable ``last*.ckpt`` (what ``--ckpt_path last`` loads)."""
        folders = {Path(cb.dirpath) if cb.dirpath else run_dir / "checkpoints"
                   for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)}
        return any(path.exists() for folder in folders for path in folder.glob("last*.ckpt"))

    def before_fit(self) -> None:
        self._protect_run_directory()
        self._size_trainer()


def main(args: list[str] | None = None) -> ImpressLightningCLI | None:
    """Console-script entry point: ``fit | validate | test`` through LightningCLI, ``export | predict`` tools.

    ``args`` defaults to the command line (``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return None
    if argv[0] in TOOL_MODULES:
        importlib.import_module(TOOL_MODULES[argv[0]]).main(argv[1:])
        return None
    return ImpressLightningCLI(
        ImpressLearnModule,
        TaskSequenceDataModule,
        subclass_mode_data=True,
        args=args,  # None: LightningCLI reads sys.argv itself (passing both makes it warn)
        auto_configure_optimizers=False,
        # The run directory is fixed per config so `--ckpt_path last` finds it; _protect_run_directory
        # keeps a fresh run from overwriting an earlier one.
        save_config_kwargs={"overwrite": True},
        save_config_callback=LoggedSaveConfigCallback,  # also sends the resolved config to the loggers
    )


def entry() -> None:
    """The ``impress-lightning`` console script (exit status 0 on success).

    Bad input (a ValueError or a missing file, raised with a message that names the field and the fix)
    ends with that one line and exit status 2; set IMPRESS_TRACEBACK=1 to see the traceback as well.
    """
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, once per batch transfer: noise only.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("IMPRESS_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    entry()
