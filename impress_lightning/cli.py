"""The ``impress-lightning`` command: LightningCLI over ImpressLearnModule and TaskSequenceDataModule.

    impress-lightning fit --config configs/quickstart.yaml
    impress-lightning fit --config configs/quickstart.yaml --print_config
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from impress_lightning.callbacks import FreezeImpressions, LoggedSaveConfigCallback, RetentionEvaluator
from impress_lightning.checkpoint_file import config_mismatch, init_defaults, load_checkpoint
from impress_lightning.commands import COMMANDS, TOOL_MODULES, TRAINER_COMMANDS, top_level_help
from impress_lightning.config_files import check_config_files
from impress_lightning.data import TaskSequenceDataModule
from impress_lightning.errors import run_reporting_errors
from impress_lightning.module import ImpressLearnModule
from impress_lightning.run_lock import RunLock


class RunDirectoryError(ValueError):
    """A run would overwrite or misuse an earlier run's directory; the message is one line with the fix."""


def _is_checkpoint_file(ckpt_path: object) -> bool:
    """Whether ``--ckpt_path`` names a file (not "last"/"best"/"hpc"/"registry..." or nothing)."""
    return bool(ckpt_path) and ckpt_path not in ("last", "best", "hpc") and not str(ckpt_path).startswith("registry")


class ImpressLightningCLI(LightningCLI):
    """LightningCLI that links what the model needs from the data (never typed twice), always adds the
    impression-freezing and retention callbacks, and sizes the trainer from the task schedule.

    Before a ``fit``, ``validate`` or ``test`` touches the run directory it reads the checkpoint it will load
    and checks it fits the config; a ``fit`` then locks the directory for as long as it runs.
    """

    _run_lock: RunLock | None = None
    _loaded: tuple[Path, dict] | None = None  # the --ckpt_path file read in _parse_ckpt_path

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

    def _run_directory(self) -> Path:
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the config's model settings by those saved in a ``--ckpt_path`` file. Read the file
        first (one-line errors for a missing, unreadable or foreign file) and refuse when the config's settings
        differ from the checkpoint's, instead of letting them be overridden unnoticed."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not _is_checkpoint_file(ckpt_path):
            super()._parse_ckpt_path()
            return
        self._loaded = (Path(ckpt_path), load_checkpoint(ckpt_path)[0])
        before = self.config[subcommand].model.clone().as_dict()
        super()._parse_ckpt_path()
        after = self.config[subcommand].model.as_dict()
        # What the file replaced = where config and checkpoint differ (linked fields come from the data).
        linked = {"num_tasks", "num_classes", "input_shape"}
        for note in config_mismatch({"hyper_parameters": {k: v for k, v in after.items() if k not in linked}},
                                    {k: v for k, v in before.items() if k not in linked}, None, ckpt_path,
                                    evaluating=subcommand != "fit"):
            rank_zero_info(f"[impress] the checkpoint's setting is used: {note}")

    def _check_checkpoint(self) -> None:
        """Check the checkpoint this command will load fits the instantiated model and data (the data settings
        and the linked fields), before anything is written: a one-line error names every field that differs."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        path = self._last_checkpoint(self._run_directory()) if ckpt_path == "last" else \
            Path(ckpt_path) if _is_checkpoint_file(ckpt_path) else None
        if path is None:
            return  # nothing to load (or "last" with nothing to resume: a first start, see _protect_run_directory)
        loaded, self._loaded = self._loaded, None  # not kept for the whole run: it holds every weight
        ckpt = loaded[1] if loaded is not None and loaded[0] == path else load_checkpoint(path)[0]
        for note in config_mismatch(ckpt, self.model.hparams, getattr(self.datamodule, "hparams", None), path,
                                    evaluating=self.subcommand != "fit", model_defaults=init_defaults(type(self.model)),
                                    data_defaults=init_defaults(type(self.datamodule))):
            rank_zero_info(f"[impress] resuming with a changed setting: {note}")

    def _protect_run_directory(self) -> None:
        """Refuse to start a fresh run on top of an earlier run's results (resuming is fine)."""
        config = self.config[self.subcommand]
        if config.get("ckpt_path"):
            logger = self.trainer.logger
            if type(logger).__name__ == "WandbLogger" and not config.trainer.logger.init_args.get("id"):
                # A new W&B run id means a new checkpoint folder: "last" would silently start from scratch.
                raise RunDirectoryError("resuming with WandbLogger needs the interrupted run's id: add "
                                        "--trainer.logger.init_args.id <run id> (see docs/wandb.md)")
        run_dir = self._run_directory()
        earlier = [p.name for p in (run_dir / "checkpoints", run_dir / "retention.json") if p.exists()]
        if config.get("ckpt_path") == "last" and earlier and self._last_checkpoint(run_dir) is None:
            # Lightning would only warn and train from scratch over the earlier run's files.
            raise RunDirectoryError(f"--ckpt_path last but {run_dir} holds no last*.ckpt: resume from a file with "
                                    "--ckpt_path <file> (e.g. checkpoints/taskNN-*.ckpt), or start elsewhere with "
                                    "--trainer.logger.init_args.save_dir <new dir>")
        if earlier and not config.get("ckpt_path"):
            raise RunDirectoryError(f"run directory {run_dir} already holds {', '.join(earlier)}: resume with "
                                    "--ckpt_path last, or start elsewhere with --trainer.logger.init_args.save_dir "
                                    "<new dir>")

    def _lock_run_directory(self) -> None:
        """Hold the run directory for this fit (rank zero; the other processes write nothing of their own)."""
        if not self.trainer.is_global_zero:
            return
        self._run_lock = RunLock.acquire(self._run_directory())
        if self._run_lock.took_over:
            rank_zero_info(f"[impress] took over the stale lock of a run that is gone ({self._run_lock.took_over})")

    def _keep_metrics_history(self, run_dir: Path) -> None:
        """On resume, CSVLogger would delete the run's metrics.csv: keep it as metrics.before-resume-N.csv."""
        metrics = run_dir / "metrics.csv"
        if not self.trainer.is_global_zero or not metrics.exists():
            return
        n = 1
        while (run_dir / f"metrics.before-resume-{n}.csv").exists():
            n += 1
        metrics.rename(run_dir / f"metrics.before-resume-{n}.csv")

    def _last_checkpoint(self, run_dir: Path) -> Path | None:
        """The newest ``last*.ckpt`` of the ModelCheckpoint folders: what ``--ckpt_path last`` loads."""
        folders = {Path(cb.dirpath) if cb.dirpath else run_dir / "checkpoints"
                   for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)}
        found = [path for folder in folders for path in folder.glob("last*.ckpt") if path.exists()]
        return max(found, key=lambda path: path.stat().st_mtime) if found else None

    def before_fit(self) -> None:
        # Everything that can refuse the run comes before the first write (lock, metrics rename, config.yaml).
        self._check_checkpoint()
        self._lock_run_directory()  # first: a directory another live run holds is refused as such
        self._protect_run_directory()
        if self.config[self.subcommand].get("ckpt_path"):
            self._keep_metrics_history(self._run_directory())
        self._size_trainer()

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # however the run ends, the directory is free again
            if self._run_lock is not None:
                self._run_lock.release()


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
    check_config_files(argv)  # a missing or malformed --config file, named, before jsonargparse reads it
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
        parser_kwargs={"exit_on_error": False},  # errors raise, so entry() prints one line, not the usage block
    )


def entry(args: list[str] | None = None) -> None:
    """The ``impress-lightning`` console script (exit status 0 on success).

    A user mistake (bad settings, a checkpoint that is unreadable or does not fit, missing data, no network, a
    run directory in use, a run that diverged) ends with one ``error:`` line that names the field and the fix,
    and exit status 2; set IMPRESS_TRACEBACK=1 to see the traceback as well. Other errors are bugs: traceback.
    """
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, once per batch transfer: noise only.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    argv = list(sys.argv[1:] if args is None else args)
    prog = "impress-lightning" + (f" {argv[0]}" if argv and argv[0] in COMMANDS else "")
    status = run_reporting_errors(lambda: main(args), prog)  # None: LightningCLI reads sys.argv
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    entry()
