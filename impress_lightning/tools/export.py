"""``impress-lightning export``: turn a training checkpoint into a compact task bank (see docs/export.md).

    impress-lightning export --ckpt_path runs/quickstart/checkpoints/last.ckpt --output bank.pt
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from jsonargparse import ArgumentParser

from impress_lightning.artifact import ArtifactError, TaskBank
from impress_lightning.bank_model import TaskBankModel
from impress_lightning.checkpoint_file import CheckpointError, load_checkpoint
from impress_lightning.commands import COMMANDS
from impress_lightning.module import ImpressLearnModule

# Keys Lightning itself writes into a checkpoint; any other top-level dict is a datamodule's state_dict().
_LIGHTNING_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                   "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters",
                   "datamodule_hparams_name", "datamodule_hyper_parameters", "hparams_type"}


def read_checkpoint(path: str | Path, trust: bool = False) -> tuple[dict[str, Any], ImpressLearnModule]:
    """Load a Lightning checkpoint of :class:`ImpressLearnModule` on CPU: its dict (for the datamodule's
    metadata) and the module rebuilt through ``load_from_checkpoint``.

    Read with ``weights_only=True`` unless ``trust`` (for checkpoints that pickle custom objects).
    """
    ckpt, content = load_checkpoint(path, trust, trust_flag="--trust_checkpoint")
    try:
        module = ImpressLearnModule.load_from_checkpoint(io.BytesIO(content), map_location="cpu",
                                                         weights_only=not trust)
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
        raise ArtifactError(f"--ckpt_path {path}: its state does not fit ImpressLearnModule: {first}") from None
    return ckpt, module.eval()


def _floats(value: Any) -> list[float]:
    values = value.tolist() if torch.is_tensor(value) else value
    return [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)]


def _normalization(source: dict[str, Any]) -> dict[str, list[float]] | None:
    pair = source["normalization"] if isinstance(source.get("normalization"), dict) else source
    if pair.get("mean") is None or pair.get("std") is None:
        return None
    return {"mean": _floats(pair["mean"]), "std": _floats(pair["std"])}


def _datamodule_class(hparams: dict[str, Any]) -> type | None:
    """The datamodule class these saved hyper-parameters describe: the ``_class_path`` LightningCLI records
    (only inside impress_lightning: nothing else named in a file is imported), else TaskSequenceDataModule when
    its ``dataset`` and ``family`` are present (a datamodule built in Python)."""
    from impress_lightning.data import TaskSequenceDataModule

    path = hparams.get("_class_path")
    if isinstance(path, str) and path.startswith("impress_lightning."):
        module_name, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name, None)
        return cls if isinstance(cls, type) and issubclass(cls, TaskSequenceDataModule) else None
    return TaskSequenceDataModule if {"dataset", "family"} <= set(hparams) else None


def _from_datamodule(hparams: dict[str, Any]) -> tuple[dict[str, list[float]] | None, list[list[Any]] | None]:
    """Normalisation and label maps of the TaskSequenceDataModule (or preset) rebuilt from its saved
    hyper-parameters. Building one loads no data."""
    cls = _datamodule_class(hparams)
    if cls is None:
        return None, None
    params = inspect.signature(cls.__init__).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_") and (takes_all or k in params)}
    try:
        dm = cls(**kwargs)
        info = dm.provider.info
        return {"mean": _floats(info.mean), "std": _floats(info.std)}, dm.label_maps
    except Exception:  # noqa: BLE001 - e.g. an ImageFolder tree that is not on this machine: nothing known
        return None, None


def data_metadata(ckpt: dict[str, Any]) -> tuple[dict[str, list[float]] | None, list[list[Any]] | None]:
    """Normalisation constants and label maps of the run's datamodule, or None where nothing is known.

    Explicit ``mean`` and ``std`` (or ``normalization: {mean, std}``) and ``label_maps`` (one list per task:
    output index -> dataset label) in the datamodule's saved hyper-parameters or ``state_dict()`` come first;
    otherwise the TaskSequenceDataModule (or preset) is rebuilt from its saved hyper-parameters and asked.
    """
    hparams = ckpt.get("datamodule_hyper_parameters") or {}
    sources = [hparams] + [v for k, v in ckpt.items() if k not in _LIGHTNING_KEYS and isinstance(v, dict)]
    normalization, label_maps = None, None
    for source in sources:
        normalization = normalization or _normalization(source)
        maps = source.get("label_maps")
        if label_maps is None and maps is not None:
            label_maps = [list(m.tolist() if torch.is_tensor(m) else m) for m in maps]
    if normalization is None or label_maps is None:
        dm_norm, dm_maps = _from_datamodule(hparams)
        normalization = normalization or dm_norm
        label_maps = label_maps if label_maps is not None else dm_maps
    return normalization, label_maps


def bank_from_checkpoint(path: str | Path, *, normalization: dict[str, Sequence[float]] | None = None,
                         label_maps: Sequence[Sequence[Any]] | None = None,
                         trust: bool = False) -> tuple[TaskBank, ImpressLearnModule]:
    """The task bank of checkpoint ``path`` and the module it came from. ``normalization`` / ``label_maps``
    override what the datamodule recorded."""
    ckpt, module = read_checkpoint(path, trust)
    stored_norm, stored_maps = data_metadata(ckpt)
    bank = TaskBank.from_module(module, normalization=normalization or stored_norm,
                                label_maps=label_maps if label_maps is not None else stored_maps)
    return bank, module


@torch.no_grad()
def verify(bank: TaskBank, module: ImpressLearnModule, batch: int = 4) -> None:
    """Raise unless the model rebuilt from ``bank``'s saved bytes gives the module's exact logits for every
    learned task on a random batch."""
    model = TaskBankModel(TaskBank.from_bytes(bank.to_bytes()))
    x = torch.randn(batch, *bank.input_shape, generator=torch.Generator().manual_seed(0))
    for task in bank.tasks:
        if not torch.equal(model(x, task), module(x, task)):
            raise ArtifactError(f"the rebuilt model's logits differ from the checkpoint's for task {task}")


def size_report(bank: TaskBank, bank_path: Path, bank_bytes: int, ckpt_path: Path) -> str:
    """Human-readable size breakdown of a written bank, compared with the checkpoint and with SupSup."""
    sizes = bank.sizes(bank_bytes)
    k, combos = bank.num_impressions, bank.slots.count(-1)
    weights = sum(math.prod(s) for s in bank.layer_shapes)
    rule = bank.combination["name"]
    notes = {
        "masks": f"{k} mask(s) x {sizes['masks'] // max(k, 1):,} B (1 bit per weight, {weights:,} weights)",
        "coefficients": f"{combos} combination task(s) x {bank.coefficients.shape[1]} {str(bank.coefficients.dtype)[6:]} "
                        f"({rule})",
        "signatures": f"{bank.feature_signatures.shape[0]} feature signature(s), float16 (model.feature_signatures)",
        "batchnorm": f"{len(bank.tasks)} task(s) x {len(bank.bn_names)} BN layer(s), mean+var float32",
        "other": "backbone state that is neither regenerated nor masked",
        "metadata": "shapes, selections, label maps, normalisation, file structure",
        "total": "",
    }
    lines = [f"exported {len(bank.tasks)} learned task(s) {bank.tasks} ({len(bank.tasks) - combos} impression, "
             f"{combos} combination; source {bank.source}) of {bank.backbone} to {bank_path}"]
    lines += [f"  {name:<13}{sizes[name]:>11,} B   {notes[name]}".rstrip() for name in notes]
    ckpt_bytes = ckpt_path.stat().st_size
    lines.append(f"checkpoint {ckpt_path}: {ckpt_bytes:,} B ({ckpt_bytes / sizes['total']:.1f}x the bank)")
    lines.append(f"SupSup (a dedicated mask per task) for the same {len(bank.tasks)} task(s): "
                 f"{bank.supsup_mask_bytes():,} B of masks (+{sizes['batchnorm']:,} B BN)")
    norm = bank.normalization
    lines.append(f"normalisation: {'mean ' + str(norm['mean']) + ' std ' + str(norm['std']) if norm else 'not stored'}"
                 f"; label maps: {'stored' if bank.label_maps is not None else 'not stored (labels = output index)'}")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    """Arguments of ``impress-lightning export``."""
    parser = ArgumentParser(
        prog="impress-lightning export", description=COMMANDS["export"] + " The frozen weights are regenerated "
        "from the backbone seed, never stored.", exit_on_error=False)  # errors raise: one line, no usage block
    parser.add_argument("--ckpt_path", required=True, type=Path, help="Lightning checkpoint of ImpressLearnModule")
    parser.add_argument("--output", required=True, type=Path, help="task bank file to write (e.g. bank.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel normalisation mean (overrides the "
                        "datamodule's)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel normalisation std (with --mean)")
    parser.add_argument("--label_maps", type=Path, help="JSON file: one list per task mapping output index -> label")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="load a checkpoint that pickles custom objects (weights_only=False); only for files "
                             "you trust")
    parser.add_argument("--no_verify", action="store_true",
                        help="skip checking that the rebuilt model reproduces the checkpoint's logits")
    return parser


def main(argv: Sequence[str] | None = None) -> TaskBank:
    """Entry point of ``impress-lightning export``; returns the written bank."""
    args = build_parser().parse_args(argv)
    try:
        if (args.mean is None) != (args.std is None):
            raise ArtifactError("pass --mean and --std together (one value per input channel)")
        if args.output.exists() and not args.overwrite:
            raise ArtifactError(f"--output {args.output} already exists: choose another path or pass --overwrite")
        label_maps = None
        if args.label_maps is not None:
            if not args.label_maps.is_file():
                raise ArtifactError(f"--label_maps {args.label_maps} does not exist")
            label_maps = json.loads(args.label_maps.read_text())
        norm = None if args.mean is None else {"mean": args.mean, "std": args.std}
        bank, module = bank_from_checkpoint(args.ckpt_path, normalization=norm, label_maps=label_maps,
                                            trust=args.trust_checkpoint)
        if not args.no_verify:
            verify(bank, module)
        written = bank.save(args.output, overwrite=args.overwrite)
    except (ArtifactError, CheckpointError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {err}") from None
    print(size_report(bank, args.output, written, args.ckpt_path))
    return bank


if __name__ == "__main__":
    from impress_lightning.errors import run_reporting_errors

    raise SystemExit(run_reporting_errors(main, "impress-lightning export"))
