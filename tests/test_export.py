"""`impress-lightning export` and the task-bank artifact: a tiny stream is trained, checkpointed, exported and
rebuilt; the rebuilt model must reproduce the trained module's logits bit-for-bit for every task."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Callable, NamedTuple

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from impress_lightning.artifact import FORMAT_VERSION, ArtifactError, TaskBank
from impress_lightning.bank_model import TaskBankModel, load_task_bank
from impress_lightning.callbacks import FreezeImpressions, RetentionEvaluator
from impress_lightning.cli import main as cli_main
from impress_lightning.data import EmbeddedDigits, TaskSequenceDataModule
from impress_lightning.inference import TaskInference
from impress_lightning.module import ImpressLearnModule
from impress_lightning.nn import Global, PerLayer, TopK, packed_size
from impress_lightning.tools.export import data_metadata


class TrainedStream(NamedTuple):
    """A trained module, its datamodule, the checkpoints the run wrote, and its exported bank."""

    module: ImpressLearnModule
    dm: TaskSequenceDataModule
    last: Path
    first_epoch: Path
    bank: Path
    export_output: str


def train_stream(root: Path, backbone: str, source: str, family: str = "rotate",
                 feature_signatures: bool = False) -> TrainedStream:
    """Train 3 digit tasks (2 impressions for ImpressLearn) for one short epoch each, checkpointing every epoch."""
    torch.manual_seed(0)
    dm = TaskSequenceDataModule(dataset="digits", family=family, num_tasks=3, batch_size=64, train_subset=64,
                                classes_per_task=3 if family == "split" else None, seed=0)
    module = ImpressLearnModule(backbone=backbone, num_tasks=3, num_classes=dm.num_classes, input_shape=dm.input_shape,
                                num_impressions=2, impression_source=source, mask_rule=TopK(0.3),
                                feature_signatures=feature_signatures)
    ckpt = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_on_train_epoch_end=True, save_top_k=-1)
    trainer = L.Trainer(max_epochs=module.schedule.total_epochs, reload_dataloaders_every_n_epochs=1,
                        callbacks=[FreezeImpressions(verbose=False),
                                   RetentionEvaluator(output_dir=str(root), plots=False), ckpt],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, dm)
    first = next((root / "checkpoints").glob("epoch=0-*.ckpt"))
    last, bank = root / "checkpoints" / "last.ckpt", root / "bank.pt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        export(last, bank)
    return TrainedStream(module.eval(), dm, last, first, bank, printed.getvalue())


def export(ckpt: Path, output: Path, *extra: str) -> None:
    """``impress-lightning export`` through the console-script entry point."""
    cli_main(["export", "--ckpt_path", str(ckpt), "--output", str(output), *extra])


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> Callable[..., TrainedStream]:
    """``streams(backbone, source, family)``: a trained and exported stream, trained once per module."""
    trained: dict[tuple[str, ...], TrainedStream] = {}

    def get(*config: str) -> TrainedStream:
        if config not in trained:
            trained[config] = train_stream(tmp_path_factory.mktemp("run"), *config)
        return trained[config]
    return get


@pytest.fixture(scope="module", params=[
    pytest.param(("lenet_300_100", "heterogeneous", "split"), id="mlp-heterogeneous"),
    pytest.param(("lenet_300_100", "supsup", "rotate"), id="mlp-supsup"),
    pytest.param(("gem_resnet18", "heterogeneous", "rotate"), id="conv-heterogeneous", marks=pytest.mark.slow),
    pytest.param(("gem_resnet18", "supsup", "split"), id="conv-supsup", marks=pytest.mark.slow)])
def stream(request, streams) -> TrainedStream:
    return streams(*request.param)


def test_rebuilt_bank_predicts_exactly_like_the_module(stream):
    model = load_task_bank(stream.bank)
    assert model.tasks == [0, 1, 2]
    random_x = torch.randn(8, *stream.dm.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for task in range(3):
            x = next(iter(stream.dm.eval_dataloader(task)))[0][:32]
            assert torch.equal(model(x, task), stream.module(x, task)), f"task {task} logits differ"
            assert torch.equal(model(random_x, task), stream.module(random_x, task))
            assert torch.equal(model.predict(x, task), stream.module.predict_task(x, task))


def test_export_prints_the_size_breakdown(stream):
    bank = TaskBank.load(stream.bank)
    sizes = bank.sizes(stream.bank.stat().st_size)
    for part in ("masks", "coefficients", "batchnorm", "metadata", "total"):
        assert f"{part} " in stream.export_output and f"{sizes[part]:,} B" in stream.export_output
    assert f"checkpoint {stream.last}: {stream.last.stat().st_size:,} B" in stream.export_output
    assert f"{bank.supsup_mask_bytes():,} B of masks" in stream.export_output


def test_bank_stores_exactly_the_bank_bits_selections_and_bn(stream):
    bank = TaskBank.load(stream.bank)
    net, k = stream.module.net, stream.module.table.capacity
    assert bank.masks.shape[0] == k
    assert bank.masks.nbytes == sum(packed_size(layer.bank.numel) for layer in net.layers) * k
    assert torch.equal(bank.masks, torch.cat([layer.bank.packed[:k] for layer in net.layers], dim=1))
    if stream.module.source == "supsup":
        assert bank.slots == [0, 1, 2] and bank.coefficients.numel() == 0
    else:
        assert bank.slots == [0, 1, -1]
        assert torch.equal(bank.coefficients[0], stream.module.table.coefficients[2].detach())
    if net.bn_names:
        expected = torch.cat([torch.cat([bn.task_mean, bn.task_var], dim=1) for bn in net.batchnorms], dim=1)
        assert torch.equal(bank.bn_stats, expected)
    else:
        assert bank.bn_stats is None
    info = stream.dm.provider.info
    assert bank.normalization == {"mean": list(info.mean), "std": list(info.std)}
    assert bank.label_maps == stream.dm.label_maps


def test_bank_is_much_smaller_than_the_checkpoint(stream):
    bank = TaskBank.load(stream.bank)
    file_bytes = stream.bank.stat().st_size
    sizes = bank.sizes(file_bytes)
    weights = [math.prod(s) for s in bank.layer_shapes]
    assert sizes["masks"] == sum((n + 7) // 8 for n in weights) * bank.num_impressions
    assert sizes["total"] == file_bytes == sum(v for k, v in sizes.items() if k != "total")
    assert sizes["metadata"] > 0
    assert file_bytes * 10 < stream.last.stat().st_size
    assert bank.supsup_mask_bytes() == sum((n + 7) // 8 for n in weights) * 3


def test_checkpoint_from_the_middle_of_the_stream_exports_only_finished_tasks(stream, tmp_path):
    export(stream.first_epoch, tmp_path / "bank.pt")
    bank = TaskBank.load(tmp_path / "bank.pt")
    assert bank.tasks == [0] and bank.num_impressions == 1
    model = TaskBankModel(bank)
    x = torch.randn(4, *bank.input_shape)
    with torch.no_grad():
        assert torch.equal(model(x, 0), stream.module(x, 0))  # task 0 never changed after epoch 0
    with pytest.raises(ArtifactError, match="task 1 is not in this bank"):
        model(x, 1)


@pytest.fixture(scope="module")
def mlp_stream(streams) -> TrainedStream:
    return streams("lenet_300_100", "heterogeneous", "split")


def test_export_refuses_to_overwrite_unless_asked(mlp_stream, tmp_path):
    out = tmp_path / "bank.pt"
    out.write_bytes(b"earlier result")
    with pytest.raises(SystemExit, match="already exists.*--overwrite"):
        export(mlp_stream.last, out)
    assert out.read_bytes() == b"earlier result"
    export(mlp_stream.last, out, "--overwrite")
    assert TaskBank.load(out).tasks == [0, 1, 2]


def test_export_errors_are_one_line(mlp_stream, tmp_path):
    with pytest.raises(SystemExit, match="--ckpt_path .*missing.ckpt does not exist"):
        export(tmp_path / "missing.ckpt", tmp_path / "a.pt")
    torch.save({"state_dict": {"layer.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit, match="not an impress-lightning checkpoint"):
        export(tmp_path / "other.ckpt", tmp_path / "a.pt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip file")
    with pytest.raises(SystemExit, match="cannot be read as a checkpoint"):
        export(tmp_path / "junk.ckpt", tmp_path / "a.pt")
    with pytest.raises(SystemExit, match="--mean and --std together"):
        export(mlp_stream.last, tmp_path / "a.pt", "--mean", "0.5")
    assert not (tmp_path / "a.pt").exists()
    with pytest.raises(SystemExit) as exc:
        export(tmp_path / "junk.ckpt", tmp_path / "a.pt")
    assert "\n" not in str(exc.value)


def test_loading_something_else_than_a_bank_says_what_to_do(mlp_stream, tmp_path):
    with pytest.raises(ArtifactError, match="Lightning checkpoint"):
        TaskBank.load(mlp_stream.last)
    with pytest.raises(ArtifactError, match="does not exist"):
        TaskBank.load(tmp_path / "nothing.pt")
    data = torch.load(mlp_stream.bank, weights_only=True)
    torch.save({**data, "format_version": FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(ArtifactError, match="format_version"):
        TaskBank.load(tmp_path / "newer.pt")


def test_a_different_backbone_seed_is_detected(mlp_stream, tmp_path):
    bank = TaskBank.load(mlp_stream.bank)
    bank.seed += 1  # the regenerated weights would no longer be the trained ones
    with pytest.raises(ArtifactError, match="regenerated backbone weights differ"):
        TaskBankModel(bank)


def test_explicit_normalisation_and_label_maps_override_the_datamodule(mlp_stream, tmp_path):
    maps = tmp_path / "maps.json"
    maps.write_text(json.dumps([["zero", "one", "two"], ["three", "four", "five"], ["six", "seven", "eight"]]))
    export(mlp_stream.last, tmp_path / "bank.pt", "--mean", "0.1", "--std", "0.2", "--label_maps", str(maps))
    bank = TaskBank.load(tmp_path / "bank.pt")
    assert bank.normalization == {"mean": [0.1], "std": [0.2]}
    assert TaskBankModel(bank).label_map(2) == ["six", "seven", "eight"]
    maps.write_text(json.dumps([["zero", "one"]] * 3))
    with pytest.raises(SystemExit, match="label_maps needs one list of 3 labels"):
        export(mlp_stream.last, tmp_path / "other.pt", "--label_maps", str(maps))


def test_datamodule_metadata_comes_from_explicit_keys_or_the_rebuilt_datamodule():
    explicit = {"datamodule_hyper_parameters": {"mean": [0.5], "std": [0.25], "label_maps": [[3, 4], [5, 6]]}}
    assert data_metadata(explicit) == ({"mean": [0.5], "std": [0.25]}, [[3, 4], [5, 6]])
    # What LightningCLI saves for a preset: its class path and its own arguments only.
    cli_saved = {"datamodule_hyper_parameters": {"_class_path": "impress_lightning.data.EmbeddedDigits",
                                                 "num_tasks": 3, "_instantiator": "x"}}
    info = EmbeddedDigits(num_tasks=3).provider.info
    assert data_metadata(cli_saved) == ({"mean": list(info.mean), "std": list(info.std)}, None)
    python_saved = {"datamodule_hyper_parameters": {"dataset": "digits", "family": "split", "num_tasks": 2,
                                                    "classes_per_task": 5, "seed": 0}}
    norm, maps = data_metadata(python_saved)
    dm = TaskSequenceDataModule(dataset="digits", family="split", num_tasks=2, classes_per_task=5, seed=0)
    assert maps == dm.label_maps and sorted(sum(maps, [])) == list(range(10))
    # Class paths outside impress_lightning are never imported; unknown datamodules give None.
    assert data_metadata({"datamodule_hyper_parameters": {"_class_path": "os.system"}}) == (None, None)
    assert data_metadata({}) == (None, None)


def test_task_inference_runs_on_the_rebuilt_model(stream):
    model = load_task_bank(stream.bank)
    x = next(iter(stream.dm.eval_dataloader(1)))[0][:16]
    result = model.infer(x, TaskInference(strategy="oneshot"))
    assert result.task in model.tasks
    with torch.no_grad():
        assert torch.equal(result.logits, model(x, result.task)[:, : model.num_classes])


@pytest.mark.parametrize("backbone, source, granularity", [("gem_resnet18", "random", "global"),
                                                            ("lenet_300_100", "homogeneous", "layer")])
def test_every_source_and_granularity_round_trips_without_training(backbone, source, granularity):
    """Banks filled by hand (no Trainer): random impressions with global α, homogeneous with per-layer α; α and
    BN statistics set to distinct random values so a mix-up between tasks would show."""
    module = ImpressLearnModule(backbone=backbone, num_tasks=3, num_classes=4, input_shape=(3, 8, 8),
                                num_impressions=3, impression_source=source,
                                combination=Global() if granularity == "global" else PerLayer())
    gen = torch.Generator().manual_seed(0)
    if source == "random":
        module.fill_random_impressions()
    else:
        for stage in module.schedule.stages[:3]:
            for i, layer in enumerate(module.net.layers):
                layer.reset_scores(100 * stage.index + i)
            module.freeze_stage(stage)
    with torch.no_grad():
        for task, alpha in enumerate(module.table.coefficients):
            module.table.start_coefficients(task, 3, None)
            alpha.copy_(torch.rand(alpha.shape, generator=gen))
        for bn in module.net.batchnorms:
            bn.task_mean.copy_(torch.randn(bn.task_mean.shape, generator=gen))
            bn.task_var.copy_(torch.rand(bn.task_var.shape, generator=gen) + 0.5)
    module.eval()
    bank = TaskBank.from_bytes(TaskBank.from_module(module, num_learned=3).to_bytes())
    model = TaskBankModel(bank)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    with torch.no_grad():
        for task in range(3):
            assert torch.equal(model(x, task), module(x, task))
    coeffs = model.task_coeffs()  # per masked layer [T, n]
    assert [tuple(c.shape) for c in coeffs] == [(3, 3)] * module.net.num_layers
    if granularity == "global":
        assert all(torch.equal(c, coeffs[0]) for c in coeffs)
    if source == "homogeneous":
        assert bank.slots == [0, -1, -1] and all(torch.equal(c[0], torch.eye(3)[0]) for c in coeffs)
