"""DDP on CPU (2 processes, ddp_spawn + gloo): the whole stream, impression -> α phase change included.

One 2-process run (per-process batch 32) is compared with a 1-process run of global batch 64 that sees the
same global batches: Lightning gives each rank a DistributedSampler (seeded from PL_GLOBAL_SEED, strided over
one permutation), so the 1-process reference draws its batches from DistributedSampler(num_replicas=1) with the
same seed. The two runs then differ only in float summation order (per-rank means averaged by the all-reduce
vs one mean over 64), which Adam's normalised steps carry forward. Measured on this machine (torch 2.14, gloo):
identical accuracy matrices and frozen masks, α within 3.4e-5, mask scores within 1.2e-5. Tolerances below:
accuracy 0.01 (about 3 of each task's 360 test digits), α 1e-3, mask bits 0.1%.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler

from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator, TaskCheckpoint
from impress_lightning.cli import main
from impress_lightning.data import EmbeddedDigits
from impress_lightning.module import ImpressLearnModule
from impress_lightning.nn import TopK
from impress_lightning.placement import AdaptiveBank

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
NUM_TASKS = 4  # K=2 impressions (tasks 0, 1), then two combination tasks: the phase change happens at task 2
PER_RANK_BATCH, WORLD = 32, 2
ACC_TOL, ALPHA_TOL, MASK_BIT_TOL = 0.01, 1e-3, 1e-3


def make_module() -> ImpressLearnModule:
    return ImpressLearnModule(num_tasks=NUM_TASKS, num_classes=10, input_shape=(1, 8, 8), num_impressions=2,
                              mask_rule=TopK(0.3), impression_epochs=2, combination_epochs=2, seed=SEED,
                              mask_optimizer=functools.partial(torch.optim.Adam, lr=0.01),
                              alpha_optimizer=functools.partial(torch.optim.Adam, lr=0.05, weight_decay=1e-4))


def make_data(cls: type[EmbeddedDigits], batch_size: int) -> EmbeddedDigits:
    return cls(num_tasks=NUM_TASKS, batch_size=batch_size, train_subset=256, num_workers=0, seed=SEED)


class GlobalBatchDigits(EmbeddedDigits):
    """1-process reference: the global batches a WORLD-process run gets from Lightning's DistributedSampler."""

    def train_loader(self, task: int, epoch: int) -> DataLoader:
        dataset = self.source.train_dataset(task, epoch, self.augment)
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)  # set_epoch: Lightning
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate)


class RankSnapshot(L.Callback):
    """After each task (listed after FreezeImpressions), every rank saves its α, banks and scores to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.current_stage
        if trainer.current_epoch != stage.last_epoch:
            return
        state = {"alphas": [a.detach().cpu().clone() for a in pl_module.table.coefficients],
                 "banks": [layer.bank.packed.cpu().clone() for layer in pl_module.net.layers],
                 "counts": [len(layer.bank) for layer in pl_module.net.layers],
                 "scores": [layer.scores.detach().cpu().clone() for layer in pl_module.net.layers],
                 "bn": [t.cpu().clone() for bn in pl_module.net.batchnorms for t in (bn.task_mean, bn.task_var)],
                 "slots": pl_module.table.slots.cpu().clone(), "probe": pl_module.table.probe_accuracy.cpu().clone()}
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}_task{stage.task}.pt")


class WriteAudit(L.Callback):
    """Records, per rank, every file this process creates, writes, links, renames or removes under ``root``
    (a ``sys.addaudithook`` hook, installed in ``setup`` of each spawned process), saved at teardown."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    EVENTS = ("os.mkdir", "os.symlink", "os.rename", "os.remove", "os.rmdir")

    def __init__(self, root: str, out: str) -> None:
        self.root, self.out = os.path.abspath(root), out
        self.writes: list[str] = []

    def _hook(self, event: str, args: tuple) -> None:
        if event == "open":
            paths = args[:1] if isinstance(args[2], int) and args[2] & self.WRITE_FLAGS else ()
        elif event in self.EVENTS:
            paths = args[:2]  # rename/symlink: (source, destination); the others: (path, ...)
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                if path.startswith(self.root):
                    self.writes.append(f"{event} {path}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        sys.addaudithook(self._hook)  # lives as long as this (spawned) process

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        Path(self.out, f"writes_rank{trainer.global_rank}.json").write_text(json.dumps(self.writes))


class BatchCount(L.Callback):
    """At the end of training every rank writes its Lightning batches per epoch and its optimiser steps."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = {"batches": int(trainer.num_training_batches), "global_step": trainer.global_step}
        Path(self.out, f"batches_rank{trainer.global_rank}.json").write_text(json.dumps(counts))


def fit(devices: int, model: ImpressLearnModule, data: EmbeddedDigits, run_root: Path, out: Path,
        extra: list[L.Callback]) -> L.Trainer:
    kwargs: dict[str, Any] = {"strategy": "ddp_spawn_find_unused_parameters_true"} if devices > 1 else {}
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, max_epochs=model.schedule.total_epochs,
        reload_dataloaders_every_n_epochs=1, deterministic=True, enable_progress_bar=False,
        enable_model_summary=False, logger=CSVLogger(run_root, name="run", version=""),
        callbacks=[ModelCheckpoint(save_last="link", save_top_k=1, save_on_train_epoch_end=True),
                   TaskCheckpoint(verbose=False), FreezeImpressions(verbose=False),
                   RetentionEvaluator(plots=False), RankSnapshot(str(out)), *extra], **kwargs)
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 2-process run and its 1-process reference; returns their run directories and snapshot folders."""
    root = tmp_path_factory.mktemp("ddp")
    paths = {name: root / name for name in ("ddp_runs", "ddp_out", "ref_runs", "ref_out")}
    for path in paths.values():
        path.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PL_GLOBAL_SEED", str(SEED))  # the seed Lightning gives every rank's DistributedSampler
        fit(WORLD, make_module(), make_data(EmbeddedDigits, PER_RANK_BATCH), paths["ddp_runs"], paths["ddp_out"],
            [WriteAudit(str(paths["ddp_runs"]), str(paths["ddp_out"]))])
        fit(1, make_module(), make_data(GlobalBatchDigits, WORLD * PER_RANK_BATCH), paths["ref_runs"],
            paths["ref_out"], [])
    return paths


def differing_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    """Bits that differ between two bit-packed uint8 tensors."""
    xor = torch.bitwise_xor(a, b)
    return int(sum(((xor >> bit) & 1).sum() for bit in range(8)))


def snapshot(folder: Path, rank: int, task: int) -> dict[str, Any]:
    return torch.load(folder / f"rank{rank}_task{task}.pt", weights_only=False)


@pytest.mark.slow
def test_ranks_hold_identical_alphas_and_masks_through_the_phase_change(runs: dict[str, Path]) -> None:
    for task in range(NUM_TASKS):
        ranks = [snapshot(runs["ddp_out"], r, task) for r in range(WORLD)]
        assert ranks[0]["counts"] == ranks[1]["counts"] == [min(task + 1, 2)] * 3
        for key in ("alphas", "banks", "scores"):
            assert all(torch.equal(a, b) for a, b in zip(ranks[0][key], ranks[1][key], strict=True)), (task, key)
    first, last = snapshot(runs["ddp_out"], 0, 1)["alphas"], snapshot(runs["ddp_out"], 0, NUM_TASKS - 1)["alphas"]
    for task in (2, 3):  # the combination tasks learned (α moved from its uniform start) after the phase change
        assert not torch.equal(first[task], last[task])


@pytest.mark.slow
def test_two_processes_match_one_process_of_the_same_global_batch(runs: dict[str, Path]) -> None:
    ddp = json.loads((runs["ddp_runs"] / "run" / "retention.json").read_text())["accuracy_matrix"]
    ref = json.loads((runs["ref_runs"] / "run" / "retention.json").read_text())["accuracy_matrix"]
    assert len(ddp) == len(ref) == NUM_TASKS
    for i, (row, ref_row) in enumerate(zip(ddp, ref)):
        for j in range(i + 1):
            assert abs(row[j] - ref_row[j]) <= ACC_TOL, (i, j, row[j], ref_row[j])
    final, ref_final = snapshot(runs["ddp_out"], 0, NUM_TASKS - 1), snapshot(runs["ref_out"], 0, NUM_TASKS - 1)
    for alpha, ref_alpha in zip(final["alphas"], ref_final["alphas"]):
        assert torch.allclose(alpha, ref_alpha, rtol=0.0, atol=ALPHA_TOL), (alpha, ref_alpha)
    for bank, ref_bank in zip(final["banks"], ref_final["banks"]):
        assert differing_bits(bank, ref_bank) <= MASK_BIT_TOL * bank.numel() * 8


@pytest.mark.slow
def test_a_grouped_two_process_run_equals_the_ungrouped_one(runs: dict[str, Path], tmp_path: Path) -> None:
    """``batches_per_step=2`` under DDP: each rank's DistributedSampler shard is grouped in order, so every
    rank's α, masks and scores, and the accuracy matrix, are those of the ungrouped 2-process run bit for bit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PL_GLOBAL_SEED", str(SEED))
        data = make_data(EmbeddedDigits, PER_RANK_BATCH)
        data.batches_per_step = 2
        fit(WORLD, make_module(), data, tmp_path / "runs", tmp_path, [BatchCount(str(tmp_path))])
    for task in range(NUM_TASKS):
        for rank in range(WORLD):
            grouped, ungrouped = snapshot(tmp_path, rank, task), snapshot(runs["ddp_out"], rank, task)
            for key in ("alphas", "banks", "scores"):
                assert all(torch.equal(a, b) for a, b in zip(grouped[key], ungrouped[key], strict=True)), (task, key)
    matrices = [json.loads((root / "run" / "retention.json").read_text())["accuracy_matrix"]
                for root in (tmp_path / "runs", runs["ddp_runs"])]
    assert matrices[0] == matrices[1]
    # the groups really formed: Lightning saw 2 of them per epoch on each rank, for 4 optimiser steps
    assert json.loads((tmp_path / "batches_rank1.json").read_text()) == {"batches": 2, "global_step": 32}


@pytest.mark.slow
def test_only_rank_zero_writes_files(runs: dict[str, Path]) -> None:
    writes = {r: json.loads((runs["ddp_out"] / f"writes_rank{r}.json").read_text()) for r in range(WORLD)}
    assert writes[1] == []
    written = "\n".join(writes[0])
    for name in ("retention.json", "last.ckpt", "task00-impression", "task03-combination", "metrics.csv"):
        assert name in written, name  # the audit sees rank zero's writes, so an empty list on rank 1 means something
    run = runs["ddp_runs"] / "run"
    names = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() or p.is_symlink())
    tasks = [n for n in names if n.startswith("checkpoints/task")]
    assert [n.split("-acc")[0] for n in tasks] == ["checkpoints/task00-impression", "checkpoints/task01-impression",
                                                   "checkpoints/task02-combination", "checkpoints/task03-combination"]
    assert set(names) - set(tasks) == {"retention.json", "metrics.csv", "hparams.yaml", "checkpoints/last.ckpt",
                                       next(n for n in names if n.startswith("checkpoints/epoch="))}


@pytest.mark.slow
def test_per_task_batchnorm_statistics_stay_identical_across_ranks(tmp_path: Path) -> None:
    # Lightning's manual optimisation stops DDP's buffer sync after the first step; the module averages the
    # trained task's statistics itself, so every rank evaluates (and rank zero saves) the same ones.
    model = ImpressLearnModule(backbone="gem_resnet18", num_tasks=2, num_classes=10, input_shape=(1, 8, 8),
                               num_impressions=1, mask_rule=TopK(0.3), seed=SEED)
    data = EmbeddedDigits(num_tasks=2, batch_size=8, train_subset=32, num_workers=0, seed=SEED)
    fit(WORLD, model, data, tmp_path / "runs", tmp_path, [])
    for task in range(2):
        ranks = [snapshot(tmp_path, r, task)["bn"] for r in range(WORLD)]
        means, variances = ranks[0][0::2], ranks[0][1::2]
        assert all(not torch.equal(m[task], torch.zeros_like(m[task])) for m in means)  # the task's rows trained
        assert all(not torch.equal(v[task], torch.ones_like(v[task])) for v in variances)
        assert all(torch.equal(a, b) for a, b in zip(ranks[0], ranks[1], strict=True)), task


def test_ddp_trainer_config_finds_unused_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config",
              str(ROOT / "configs" / "trainer" / "ddp.yaml"), "--print_config"])
    trainer = capsys.readouterr().out.split("\ntrainer:\n", 1)[1]
    for line in ("strategy: ddp_find_unused_parameters_true", "num_nodes: 1", "sync_batchnorm: false"):
        assert f"  {line}\n" in trainer, line


@pytest.mark.slow
def test_ranks_make_identical_adaptive_bank_decisions(tmp_path: Path) -> None:
    """Every rank probes the same held-out examples with the same bank, so every placement decision, probe
    score, mask and coefficient agrees across 2 processes after every task."""
    model = ImpressLearnModule(num_tasks=NUM_TASKS, num_classes=10, input_shape=(1, 8, 8), mask_rule=TopK(0.3),
                               adaptive_bank=AdaptiveBank(target=0.8, max_impressions=2), impression_epochs=1,
                               combination_epochs=1, seed=SEED)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PL_GLOBAL_SEED", str(SEED))
        fit(WORLD, model, make_data(EmbeddedDigits, PER_RANK_BATCH), tmp_path / "runs", out, [])
    for task in range(NUM_TASKS):
        ranks = [snapshot(out, rank, task) for rank in range(WORLD)]
        for key in ("slots", "probe", "banks", "alphas", "counts"):
            first, second = ranks[0][key], ranks[1][key]
            pairs = zip(first, second) if isinstance(first, list) else [(first, second)]
            assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in pairs), (task, key)
    final = snapshot(out, 0, NUM_TASKS - 1)["slots"].tolist()
    assert final == [0, 1, -1, -1]  # tasks 1.. decided on the probe; the bank (2) is full after task 1
