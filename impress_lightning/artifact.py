"""The task bank: the small file a user ships after training (this module only reads and writes it).

A task bank keeps only what predictions need and nothing that can be regenerated. The frozen signed-constant
weights are rebuilt from the backbone name and seed (a SHA-256 of their signs is stored to prove it); the
impressions are the bank's bit-packed rows, exactly as stored; each learned task keeps its impression slot or
its coefficients (laid out by the combination rule, at its stored precision), plus its BatchNorm statistics
for conv nets. No scores, optimiser state or coefficients of unfinished tasks.

    bank = TaskBank.from_module(module)  # every finished task (module.tasks_learned)
    bank.save("bank.pt")
    model = load_task_bank("bank.pt")    # impress_lightning.bank_model
    labels = model.predict(x, task=2)

The file is a ``torch.save`` of plain tensors, lists, strings and numbers, read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

import impress_lightning
from impress_lightning.atomic import atomic_write
from impress_lightning.nn import CombinationRule, SupermaskNet, coefficients, pack_bits, packed_size
from impress_lightning.tasks import TaskTable

if TYPE_CHECKING:
    from impress_lightning.module import ImpressLearnModule

FORMAT = "impress-lightning-task-bank"
FORMAT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # 3 is 4 without baselines and signatures, 2 is 3 without hybrid heads


class ArtifactError(ValueError):
    """A task bank cannot be built, read or used; the message is one line that says what to do."""


def weight_digest(net: SupermaskNet) -> str:
    """SHA-256 of the shapes and sign bits of every frozen weight: proves a rebuilt backbone is the same."""
    digest = hashlib.sha256()
    for layer in net.layers:
        digest.update(repr(tuple(layer.weight.shape)).encode())
        digest.update(pack_bits(layer.weight.detach().cpu() < 0).numpy().tobytes())
    return digest.hexdigest()


def _extra_state(net: SupermaskNet) -> dict[str, Tensor]:
    """Persistent tensors of the backbone that are neither regenerated nor stored elsewhere in the bank (e.g.
    a torchvision model's LayerNorm or class token, left at their random initialisation)."""
    covered = set()
    for name in net.layer_names:
        covered |= {f"{name}.weight", f"{name}.scores", f"{name}.bank.packed", f"{name}.bank.count"}
    for name in net.bn_names:
        covered |= {f"{name}.task_mean", f"{name}.task_var"}
    return {k: v.detach().cpu().clone() for k, v in net.body.state_dict().items() if k not in covered}


def rule_to_dict(rule: CombinationRule) -> dict[str, Any]:
    """The combination rule as plain data: its class name and arguments."""
    return {"name": type(rule).__name__, "args": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in vars(rule).items()}}


def rule_from_dict(data: dict[str, Any]) -> CombinationRule:
    """Inverse of :func:`rule_to_dict` (only this package's rules are ever built)."""
    cls = getattr(coefficients, str(data.get("name")), None)
    if not (isinstance(cls, type) and issubclass(cls, CombinationRule)):
        raise ArtifactError(f"the bank's combination rule {data.get('name')!r} is not one of this impress-lightning's")
    return cls(**data.get("args", {}))


@dataclass
class TaskBank:
    """Everything needed to predict every learned task; see the module docstring and docs/export.md."""

    backbone: str
    input_shape: list[int]
    num_classes: int
    extra_outputs: int
    seed: int
    num_tasks: int  # tasks in the stream (BatchNorm rows of the rebuilt model)
    source: str  # impression source: heterogeneous | homogeneous | random | supsup | adaptive
    layer_names: list[str]
    layer_shapes: list[list[int]]
    weight_sha256: str
    masks: Tensor  # uint8 [K, Σ_l ceil(numel_l / 8)]: row k = impression k, every layer's packed bytes in order
    tasks: list[int]  # learned task ids (0 .. len - 1)
    slots: list[int]  # per learned task: its bank slot, or -1 for a combination task
    combination: dict[str, Any]  # the combination rule: {"name": class name, "args": {...}}
    mask_counts: list[int]  # per learned task: how many bank masks its coefficients cover (0 for impressions)
    # float32/float16 [number of combination tasks, D]: each task's flat coefficient vector laid out by the
    # rule over ``num_impressions`` masks, in the order the tasks appear in ``tasks``
    coefficients: Tensor
    # hybrid heads: the learned tasks that keep their own last-layer mask, and those masks bit-packed
    # (uint8 [len(head_tasks), ceil(numel_last / 8)], same bit order as ``masks``)
    head_tasks: list[int] = field(default_factory=list)
    head_masks: Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.uint8))
    # per learned task: its mean softmax entropy on its own held-out examples when it was learned (-1: not
    # measured), the baseline of calibrated task inference; empty in files before version 4
    baseline_entropy: list[float] = field(default_factory=list)
    # model.feature_signatures: float16 [len(tasks), C], each task's mean first-layer features on its own held-out
    # examples (feature matching); empty [0, 0] otherwise and in files before version 4
    feature_signatures: Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float16))
    bn_names: list[str] = field(default_factory=list)
    bn_features: list[int] = field(default_factory=list)
    bn_stats: Tensor | None = None  # float [len(tasks), Σ_b 2·C_b]: per BN layer its running mean, then var
    extra_state: dict[str, Tensor] = field(default_factory=dict)
    normalization: dict[str, list[float]] | None = None  # {"mean": [...], "std": [...]} per channel
    label_maps: list[list[Any]] | None = None  # label_maps[task][output index] = the dataset's label
    producer: dict[str, str] = field(default_factory=dict)

    # ----- build ------------------------------------------------------------------------------------------
    @classmethod
    def from_module(cls, module: ImpressLearnModule, num_learned: int | None = None, *,
                    normalization: dict[str, Sequence[float]] | None = None,
                    label_maps: Sequence[Sequence[Any]] | None = None) -> TaskBank:
        """The bank of ``module``'s finished tasks ``0 .. num_learned - 1`` (tasks finish in id order).

        Args:
            module: a trained (or partly trained) ImpressLearnModule.
            num_learned: how many tasks are finished; default the module's ``tasks_learned`` counter.
            normalization: ``{"mean": [...], "std": [...]}`` per input channel, if known.
            label_maps: per task, the dataset label of each head output, if labels were remapped.
        """
        net, hp = module.net, module.hparams
        if num_learned is None:
            num_learned = int(module.tasks_learned)
        tasks = list(range(min(num_learned, module.num_tasks)))
        if not tasks:
            raise ArtifactError("no task is finished yet: train at least one task (or export a later checkpoint)")
        count, table = module.bank_size, module.table
        slots = [table.slot_of(t) for t in tasks]
        missing = [t for t, s in zip(tasks, slots) if s is not None and s >= count]
        if missing:
            raise ArtifactError(f"tasks {missing} are finished but their impressions are not in the bank: the run "
                                "lacked FreezeImpressions")
        combos = [t for t, s in zip(tasks, slots) if s is None]
        packed = TaskTable([-1] * len(combos), count, table.rule, table.weight_shapes)
        with torch.no_grad():
            for row, task in enumerate(combos):
                used = int(table.mask_count[task])
                for dst, src in zip(packed.layer_views(packed.coefficients[row], used),
                                    table.layer_views(table.coefficients[task], used)):
                    dst.copy_(src)
        dtype = torch.float16 if table.rule.precision == "float16" else torch.float32
        coeffs = torch.stack([p.detach().cpu().to(dtype) for p in packed.coefficients]) if combos else \
            torch.zeros(0, packed.size, dtype=dtype)
        masks = torch.cat([layer.bank.packed[:count].detach().cpu() for layer in net.layers], dim=1)
        head_tasks = [t for t in combos if bool(table.head_kept[t])]
        head_masks = torch.stack([pack_bits(table.head_masks[t].detach().cpu()) for t in head_tasks]) if head_tasks \
            else torch.zeros(0, packed_size(net.layers[-1].bank.numel), dtype=torch.uint8)
        bn_stats = None
        if net.bn_names:
            bn_stats = torch.cat([torch.cat([bn.task_mean[tasks], bn.task_var[tasks]], dim=1).detach().cpu()
                                  for bn in net.batchnorms], dim=1)
        bank = cls(
            backbone=hp.backbone, input_shape=[int(v) for v in hp.input_shape], num_classes=int(hp.num_classes),
            extra_outputs=int(hp.extra_outputs), seed=int(hp.seed), num_tasks=int(hp.num_tasks),
            source=module.source, layer_names=list(net.layer_names),
            layer_shapes=[list(layer.weight.shape) for layer in net.layers], weight_sha256=weight_digest(net),
            masks=masks, tasks=tasks, slots=[-1 if s is None else s for s in slots],
            combination=rule_to_dict(table.rule), coefficients=coeffs, head_tasks=head_tasks, head_masks=head_masks,
            baseline_entropy=[float(table.baseline_entropy[t]) for t in tasks],
            feature_signatures=table.feature_signatures[tasks].detach().cpu() if bool(table.has_signature[tasks].all())
            else torch.zeros(0, 0, dtype=torch.float16),
            mask_counts=[int(table.mask_count[t]) if s is None else 0 for t, s in zip(tasks, slots)],
            bn_names=list(net.bn_names), bn_features=[bn.num_features for bn in net.batchnorms], bn_stats=bn_stats,
            extra_state=_extra_state(net),
            normalization=None if normalization is None else {k: [float(v) for v in normalization[k]]
                                                              for k in ("mean", "std")},
            label_maps=None if label_maps is None else [list(m) for m in label_maps],
            producer={"impress_lightning": str(impress_lightning.__version__), "torch": str(torch.__version__)})
        bank.validate()
        return bank

    def validate(self) -> None:
        """Raise :class:`ArtifactError` if the fields do not fit together."""
        numels = [math.prod(s) for s in self.layer_shapes]
        if self.masks.dtype != torch.uint8 or self.masks.dim() != 2 or \
                self.masks.shape[1] != sum(packed_size(n) for n in numels):
            raise ArtifactError(f"masks must be uint8 [K, {sum(packed_size(n) for n in numels)}], got "
                                f"{self.masks.dtype} {tuple(self.masks.shape)}")
        if len(self.slots) != len(self.tasks) or self.coefficients.shape[0] != self.slots.count(-1) or \
                len(self.mask_counts) != len(self.tasks) or self.tasks != list(range(len(self.tasks))):
            raise ArtifactError("tasks, slots and coefficients disagree: the file is damaged")
        if self.head_tasks and (self.head_masks.dtype != torch.uint8 or tuple(self.head_masks.shape) != (
                len(self.head_tasks), packed_size(numels[-1])) or any(
                t not in self.tasks or self.slots[t] >= 0 for t in self.head_tasks)):
            raise ArtifactError("head_tasks and head_masks disagree (or name impression tasks): the file is damaged")
        if self.feature_signatures.numel() and (self.feature_signatures.dtype != torch.float16 or tuple(
                self.feature_signatures.shape) != (len(self.tasks), self.layer_shapes[0][0])):
            raise ArtifactError("feature_signatures must be float16 [tasks, first-layer outputs]: the file is damaged")
        if self.baseline_entropy and len(self.baseline_entropy) != len(self.tasks):
            raise ArtifactError("baseline_entropy needs one value per learned task: the file is damaged")
        if self.normalization is not None and (
                len(self.normalization["mean"]) != len(self.normalization["std"])
                or len(self.normalization["mean"]) not in (1, self.input_shape[0])):
            raise ArtifactError(f"normalization needs one mean and one std per channel ({self.input_shape[0]}), "
                                f"got {self.normalization}")
        if self.label_maps is not None and (len(self.label_maps) != self.num_tasks or any(
                len(self.label_maps[t]) != self.num_classes for t in self.tasks)):
            raise ArtifactError(f"label_maps needs one list of {self.num_classes} labels (one per output) for each of "
                                f"the {self.num_tasks} tasks")

    # ----- sizes ------------------------------------------------------------------------------------------
    @property
    def num_impressions(self) -> int:
        """Masks stored per layer (K impressions, or one per task for SupSup)."""
        return self.masks.shape[0]

    def supsup_mask_bytes(self) -> int:
        """Bytes that dedicated SupSup masks (one bit per weight per task) would take for the same tasks."""
        return len(self.tasks) * sum(packed_size(math.prod(s)) for s in self.layer_shapes)

    def sizes(self, file_bytes: int | None = None) -> dict[str, int]:
        """Byte breakdown: masks, coefficients, batchnorm, other (extra backbone state), metadata, total.

        ``file_bytes`` is the saved file's size; without it the bank is serialised in memory to measure it.
        """
        total = len(self.to_bytes()) if file_bytes is None else file_bytes
        parts = {"masks": self.masks.nbytes + self.head_masks.nbytes, "coefficients": self.coefficients.nbytes,
                 "signatures": self.feature_signatures.nbytes,
                 "batchnorm": 0 if self.bn_stats is None else self.bn_stats.nbytes,
                 "other": sum(t.nbytes for t in self.extra_state.values())}
        return {**parts, "metadata": total - sum(parts.values()), "total": total}

    # ----- file -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plain dict that is saved (tensors, lists, strings, numbers only)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def to_bytes(self) -> bytes:
        """The file's content."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> int:
        """Write the bank to ``path`` (refusing to replace an existing file unless ``overwrite``); returns its
        size in bytes. Written to a temporary file first, so a failure never leaves half a file behind."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ArtifactError(f"output {path} already exists: choose another path or pass --overwrite")
        return atomic_write(path, self.to_bytes()).stat().st_size

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskBank:
        """Read a bank written by :meth:`save` (safely: ``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"bank file {path} does not exist")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, content: bytes, source: str = "<bytes>") -> TaskBank:
        """Inverse of :meth:`to_bytes` (``weights_only=True``: no code in the file is ever run)."""
        try:
            data = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
            raise ArtifactError(f"{source} is not a task bank ({type(err).__name__}): write one with "
                                "`impress-lightning export`") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> TaskBank:
        """Inverse of :meth:`to_dict`, with a clear error for anything else (e.g. a Lightning checkpoint)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            is_ckpt = isinstance(data, dict) and "state_dict" in data
            hint = " (it is a Lightning checkpoint: export it, or give it to predict as --ckpt_path)" if is_ckpt else ""
            raise ArtifactError(f"{source} is not an impress-lightning task bank{hint}: "
                                "run `impress-lightning export --ckpt_path CKPT --output BANK`")
        if data.get("format_version") not in READABLE_VERSIONS:
            raise ArtifactError(f"{source} has format_version {data.get('format_version')}; this impress-lightning "
                                f"reads versions {list(READABLE_VERSIONS)}: upgrade impress-lightning or re-export")
        names = {f.name for f in dataclasses.fields(cls)}
        bank = cls(**{k: v for k, v in data.items() if k in names})
        bank.validate()
        return bank
