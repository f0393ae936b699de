"""TaskBankModel: the network rebuilt from an exported task bank, for prediction and task inference."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from impress_lightning.artifact import ArtifactError, TaskBank, rule_from_dict, weight_digest
from impress_lightning.backbones import build_backbone
from impress_lightning.nn import Selection, SupermaskNet, packed_size, unpack_bits
from impress_lightning.tasks import TaskTable

if TYPE_CHECKING:
    from impress_lightning.inference import InferenceResult, TaskInference


class TaskBankModel(nn.Module):
    """The rebuilt network of a :class:`TaskBank`: ``forward(x, task)`` gives the logits of a learned task,
    bit-for-bit those of the trained module on CPU.

    Args:
        bank: the task bank.
        cache_size: learned tasks whose combined weights stay materialised.
    """

    def __init__(self, bank: TaskBank, cache_size: int = 2) -> None:
        super().__init__()
        self.bank = bank
        self.tasks, self.num_classes = list(bank.tasks), bank.num_classes
        body = build_backbone(bank.backbone, tuple(bank.input_shape), bank.num_classes + bank.extra_outputs,
                              bank_capacity=bank.num_impressions, num_tasks=bank.num_tasks, seed=bank.seed)
        self.net = SupermaskNet(body, cache_size=cache_size)
        layout = (self.net.layer_names, [list(layer.weight.shape) for layer in self.net.layers], self.net.bn_names)
        if layout != (bank.layer_names, bank.layer_shapes, bank.bn_names):
            raise ArtifactError(f"backbone {bank.backbone!r} of this impress-lightning has other layers than the bank "
                                f"was written with (impress-lightning {bank.producer.get('impress_lightning')})")
        if weight_digest(self.net) != bank.weight_sha256:
            raise ArtifactError("the regenerated backbone weights differ from the exported ones (torch "
                                f"{torch.__version__} vs {bank.producer.get('torch')}): use the versions that "
                                "wrote the bank")
        self._load_state(bank)
        self.table = TaskTable(bank.slots, bank.num_impressions, rule_from_dict(bank.combination),
                               [layer.weight.shape for layer in self.net.layers], hybrid_heads=bool(bank.head_tasks),
                               signatures=bool(bank.feature_signatures.numel()))
        with torch.no_grad():
            combos = [t for t, s in zip(bank.tasks, bank.slots) if s < 0]
            for row, task in enumerate(combos):
                self.table.coefficients[task].copy_(bank.coefficients[row].float())
            self.table.mask_count.copy_(torch.tensor(bank.mask_counts))
            self.table.num_learned.fill_(len(bank.tasks))
            if bank.feature_signatures.numel():
                for task in bank.tasks:
                    self.table.record_signature(task, bank.feature_signatures[task])
            if bank.baseline_entropy:
                self.table.baseline_entropy[: len(bank.tasks)] = torch.tensor(bank.baseline_entropy)
            head = self.net.layers[-1].weight.shape
            for row, task in enumerate(bank.head_tasks):
                self.table.head_masks[task] = unpack_bits(bank.head_masks[row], head.numel()).view(head).bool()
                self.table.head_kept[task] = True
        self.table.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def _load_state(self, bank: TaskBank) -> None:
        offset = 0
        for layer in self.net.layers:
            width = packed_size(layer.bank.numel)
            layer.bank.packed.copy_(bank.masks[:, offset:offset + width])
            layer.bank.count.fill_(bank.num_impressions)
            offset += width
            # An exported bank never learns masks: drop the score tensors (as large as the weights).
            layer.scores = nn.Parameter(torch.zeros(0), requires_grad=False)
        if bank.bn_stats is not None:
            offset = 0
            for bn, c in zip(self.net.batchnorms, bank.bn_features):
                bn.task_mean[bank.tasks] = bank.bn_stats[:, offset:offset + c]
                bn.task_var[bank.tasks] = bank.bn_stats[:, offset + c:offset + 2 * c]
                offset += 2 * c
        if bank.extra_state:
            unexpected = self.net.body.load_state_dict(bank.extra_state, strict=False).unexpected_keys
            if unexpected:
                raise ArtifactError(f"the bank holds state {unexpected} that backbone {bank.backbone!r} does not have")

    def check_task(self, task: int) -> None:
        """Raise a one-line error unless ``task`` is a learned task of this bank."""
        if task not in self.tasks:
            raise ArtifactError(f"task {task} is not in this bank: choose one of the learned tasks {self.tasks}")

    def selection(self, task: int) -> Selection:
        """The frozen weights of learned ``task``: its impression slot or its combination."""
        self.check_task(task)
        return self.table.selection(task)

    def forward(self, x: Tensor, task: int) -> Tensor:
        """Logits (all head outputs) of learned ``task`` for the normalised batch ``x``."""
        return self.net(x, self.selection(task), bn_task=task, cache_key=task)

    @torch.no_grad()
    def predict(self, x: Tensor, task: int) -> Tensor:
        """Predicted output indices (argmax over the labelled outputs) of learned ``task``."""
        return self(x, task)[:, : self.num_classes].argmax(dim=1)

    def label_map(self, task: int) -> list[Any] | None:
        """Output index -> dataset label of ``task`` (None when the bank has no label maps)."""
        return None if self.bank.label_maps is None else self.bank.label_maps[task]

    def task_coeffs(self) -> tuple[Tensor, ...]:
        """K-space coefficients of every learned task over the bank slots (the task table's convention):
        the input of task inference."""
        return self.table.kspace_rows(len(self.tasks), self.bank.num_impressions)

    def infer(self, x: Tensor, inference: TaskInference) -> InferenceResult:
        """Infer the task of batch ``x`` among the learned tasks and classify it (see impress_lightning.inference).

        Labels are unshared when the bank maps each task's outputs to its own labels; a method that calibrates
        there compares with the baselines the bank stores (one-line error for a bank without them)."""
        unshared = self.bank.label_maps is not None and any(
            self.bank.label_maps[t] != self.bank.label_maps[self.tasks[0]] for t in self.tasks)
        if inference.uses_signatures and not bool(self.table.has_signature[: len(self.tasks)].all()):
            raise ArtifactError(f"strategy={inference.strategy!r} / verify_by={inference.verify_by!r} matches each "
                                "task's feature signature, which this bank does not store: train with "
                                "--model.feature_signatures true and re-export, or use --strategy oneshot, binary, "
                                "shortlist or exhaustive")
        signatures = self.table.feature_signatures[: len(self.tasks)].double() if inference.uses_signatures else None
        baselines = self.table.baseline_entropy[: len(self.tasks)]
        if inference.calibrates(unshared) and (inference.objective != "entropy" or bool((baselines < 0).any())):
            raise ArtifactError("this bank stores no entropy baseline for every task, which calibrated inference "
                                "compares with: re-export it from a checkpoint of this version, or turn calibration "
                                "off (--calibrate never / calibrate: never)")
        return inference.infer(self.net, x, self.task_coeffs(), num_classes=self.num_classes, task_ids=self.tasks,
                               classify=lambda batch, task: self(batch, task), baselines=baselines,
                               unshared_labels=unshared, signatures=signatures)


def load_task_bank(path: str | os.PathLike, cache_size: int = 2) -> TaskBankModel:
    """The inference model of the task bank file ``path`` (CPU, eval mode)."""
    return TaskBankModel(TaskBank.load(path), cache_size)
