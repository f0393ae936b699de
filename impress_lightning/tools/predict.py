"""``impress-lightning predict``: classify images or a tensor file with a task bank (or a checkpoint).

    impress-lightning predict --bank bank.pt --input images/ --task 2 --output preds.csv
    impress-lightning predict --bank bank.pt --input batch.pt --infer --output preds.json

Inputs: a folder of images (png, jpg, ... read with PIL, converted to the bank's channels and size, scaled to
[0, 1] and normalised with the stored mean/std), or a ``.pt`` file holding one float tensor
``[N, *input_shape]`` that is already normalised. Output: one row per input (input, task, label, output).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence, get_args

import numpy as np
import torch
from jsonargparse import ArgumentParser
from rich.console import Console
from rich.progress import Progress
from torch import Tensor

from impress_lightning.artifact import ArtifactError, TaskBank
from impress_lightning.atomic import atomic_write
from impress_lightning.bank_model import TaskBankModel
from impress_lightning.commands import COMMANDS
from impress_lightning.data import NormalizeCollate
from impress_lightning.inference.task_inference import CalibrateWhen, StrategyName

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_PIL_MODES = {1: "L", 3: "RGB"}


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ArtifactError(f"--input {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_image(path: Path, input_shape: Sequence[int]) -> Tensor:
    """uint8 ``[C, H, W]`` image with the bank's channels (grayscale or RGB) and size (bilinear resize)."""
    from PIL import Image

    channels, height, width = input_shape
    if channels not in _PIL_MODES:
        raise ArtifactError(f"images can only feed 1- or 3-channel inputs; this bank takes {channels} channels: "
                            "pass a tensor file instead")
    try:
        with Image.open(path) as img:
            img = img.convert(_PIL_MODES[channels])
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.array(img, dtype=np.uint8)
    except OSError as err:
        raise ArtifactError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array).reshape(height, width, channels).permute(2, 0, 1).contiguous()


def normalize(images: Tensor, normalization: dict[str, list[float]]) -> Tensor:
    """float32 ``(images / 255 - mean) / std`` per channel: the training collate's own arithmetic."""
    return NormalizeCollate(normalization["mean"], normalization["std"]).normalize(images)


def read_tensor_file(path: Path, input_shape: Sequence[int]) -> Tensor:
    """The float tensor ``[N, *input_shape]`` saved in ``path`` (``torch.save(x, path)``)."""
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - one answer for any unreadable file
        raise ArtifactError(f"--input {path} cannot be read as a tensor file ({type(err).__name__})") from None
    if not torch.is_tensor(x) or not x.is_floating_point() or tuple(x.shape[1:]) != tuple(input_shape):
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ArtifactError(f"--input {path} must hold one float tensor [N, {', '.join(map(str, input_shape))}] "
                            f"(already normalised), got {got}")
    return x.to(torch.float32)


def check_inputs(x: Tensor, path: Path, normalization: dict[str, list[float]] | None) -> None:
    """Refuse an empty tensor, NaN or infinite values, and (when the normalisation is known) values far outside
    what normalised images can take, such as raw 0-255 pixels: each would give labels that mean nothing."""
    if len(x) == 0:
        raise ArtifactError(f"--input {path} holds no inputs (an empty tensor): pass at least one example")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(dim=1).nonzero()[0])
        raise ArtifactError(f"--input {path} holds {int(bad.sum())} NaN or infinite value(s) (first in input "
                            f"{first}): pass finite inputs")
    if normalization is None:
        return
    mean, std = (torch.tensor(normalization[k], dtype=torch.float32).reshape(-1, 1, 1) for k in ("mean", "std"))
    low, high = -mean / std, (1 - mean) / std  # what pixels in [0, 1] become
    # Generous bounds: two ranges' widths beyond either end still pass (noise, augmentation, other pipelines).
    margin = 2 * (high - low)
    if ((x < low - margin) | (x > high + margin)).any():
        raise ArtifactError(f"--input {path} holds values in [{float(x.min()):.4g}, {float(x.max()):.4g}], far "
                            f"outside the [{float(low.min()):.4g}, {float(high.max()):.4g}] that normalised images "
                            f"take for this bank: normalise as in training ((pixels / 255 - mean) / std with mean "
                            f"{normalization['mean']}, std {normalization['std']}), or pass a folder of images")


def input_batches(source: Path, bank: TaskBank, batch_size: int,
                  normalization: dict[str, list[float]] | None) -> tuple[int, Iterator[tuple[list[str], Tensor]]]:
    """Number of inputs and an iterator over ``(names, normalised batch)`` for a folder or a tensor file."""
    if source.is_dir():
        if normalization is None:
            raise ArtifactError("the bank stores no normalisation constants: pass --mean and --std (per channel, as "
                                "in training)")
        files = list_images(source)

        def folder() -> Iterator[tuple[list[str], Tensor]]:
            for i in range(0, len(files), batch_size):
                chunk = files[i:i + batch_size]
                yield [p.name for p in chunk], normalize(torch.stack([load_image(p, bank.input_shape) for p in chunk]),
                                                         normalization)
        return len(files), folder()
    if source.is_file():
        x = read_tensor_file(source, bank.input_shape)
        check_inputs(x, source, normalization)
        names = [f"{source.name}[{i}]" for i in range(len(x))]
        return len(x), ((names[i:i + batch_size], x[i:i + batch_size]) for i in range(0, len(x), batch_size))
    raise ArtifactError(f"--input {source} does not exist (give a folder of images or a .pt tensor file)")


def label_of(model: TaskBankModel, task: int, output: int) -> Any:
    """Dataset label of head output ``output`` under ``task`` (the output index when no label map applies)."""
    maps = model.bank.label_maps
    return output if maps is None else maps[task][output]


def predict_rows(model: TaskBankModel, batches: Iterator[tuple[list[str], Tensor]], total: int, task: int | None,
                 inference: Any | None, console: Console) -> list[dict[str, Any]]:
    """One row per input: with ``task`` given, that task; otherwise the task ``inference`` picks per batch."""
    rows: list[dict[str, Any]] = []
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        bar = progress.add_task("predicting", total=total)
        for names, x in batches:
            if inference is None:
                outputs, used = model.predict(x, task), task
            else:
                result = model.infer(x, inference)
                outputs, used = result.logits.argmax(dim=1), result.task
            for name, out in zip(names, outputs.tolist()):
                rows.append({"input": name, "task": used, "label": label_of(model, used, out), "output": out})
            progress.advance(bar, len(names))
    return rows


def write_rows(rows: list[dict[str, Any]], output: Path | None, overwrite: bool) -> None:
    """Write rows as CSV (``.csv``), JSON (``.json``) or CSV on stdout (no ``output``)."""
    if output is None:
        writer = csv.DictWriter(sys.stdout, fieldnames=["input", "task", "label", "output"])
        writer.writeheader()
        writer.writerows(rows)
        return
    if output.exists() and not overwrite:
        raise ArtifactError(f"--output {output} already exists: choose another path or pass --overwrite")
    if output.suffix == ".json":
        atomic_write(output, json.dumps(rows, indent=1))
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["input", "task", "label", "output"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(output, text.getvalue())


def build_parser() -> ArgumentParser:
    """Arguments of ``impress-lightning predict``."""
    parser = ArgumentParser(prog="impress-lightning predict", description=COMMANDS["predict"],
                            exit_on_error=False)  # errors raise: one line, no usage block
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--bank", type=Path, help="task bank written by `impress-lightning export`")
    src.add_argument("--ckpt_path", type=Path, help="training checkpoint (exported in memory)")
    parser.add_argument("--input", required=True, type=Path,
                        help="folder of images, or a .pt file holding a normalised float tensor [N, C, H, W]")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--task", type=int, help="task id to predict with")
    how.add_argument("--infer", action="store_true", help="infer the task of every batch (no task id)")
    parser.add_argument("--strategy", default="oneshot", choices=list(get_args(StrategyName)),
                        help="task-inference strategy (with --infer; see docs/task_inference.md)")
    parser.add_argument("--objective", default="entropy", choices=["entropy", "superfluous"],
                        help="task-inference objective (with --infer)")
    parser.add_argument("--calibrate", default="unshared_labels", choices=list(get_args(CalibrateWhen)),
                        help="shortlist / exhaustive: compare tasks against the baselines the bank stores "
                             "(default: where labels are unshared)")
    parser.add_argument("--infer_examples", type=int, default=None,
                        help="leading examples of each batch that drive task inference (default: the whole batch)")
    parser.add_argument("--output", type=Path, help="preds.csv or preds.json (default: CSV on stdout)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="inputs per batch (with --infer every batch is assumed to come from one task)")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean for images (overrides the bank's)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std for images (with --mean)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point of ``impress-lightning predict``; returns the prediction rows."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.batch_size < 1:
            raise ArtifactError(f"--batch_size must be >= 1, got {args.batch_size}")
        if (args.mean is None) != (args.std is None):
            raise ArtifactError("pass --mean and --std together (one value per input channel)")
        if args.output is not None and args.output.exists() and not args.overwrite:
            raise ArtifactError(f"--output {args.output} already exists: choose another path or pass --overwrite")
        if args.bank is not None:
            bank = TaskBank.load(args.bank)
        else:
            from impress_lightning.tools.export import bank_from_checkpoint

            bank = bank_from_checkpoint(args.ckpt_path)[0]
        model = TaskBankModel(bank)
        inference = None
        if args.infer:
            from impress_lightning.inference import TaskInference

            inference = TaskInference(strategy=args.strategy, objective=args.objective,
                                      num_examples=args.infer_examples, calibrate=args.calibrate)
        else:
            model.check_task(args.task)
        norm = bank.normalization if args.mean is None else {"mean": args.mean, "std": args.std}
        total, batches = input_batches(args.input, bank, args.batch_size, norm)
        with torch.no_grad():
            rows = predict_rows(model, batches, total, args.task, inference, console)
        write_rows(rows, args.output, args.overwrite)
    except (ArtifactError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.output is not None:
        console.print(f"wrote {len(rows)} prediction(s) to {args.output}")
    return rows


if __name__ == "__main__":
    from impress_lightning.errors import run_reporting_errors

    raise SystemExit(run_reporting_errors(main, "impress-lightning predict"))
