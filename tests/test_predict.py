"""`impress-lightning predict`: image folders and tensor files through the console-script entry point, with a
given task id or with task inference; outputs checked against the trained module's own predictions."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import TrainedStream, train_stream

from impress_lightning.artifact import TaskBank
from impress_lightning.cli import main as cli_main
from impress_lightning.data import NormalizeCollate
from impress_lightning.tools.predict import input_batches


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedStream:
    """Split digits (3 classes per task, so label maps matter), LeNet-300-100, 2 impressions + 1 α task."""
    return train_stream(tmp_path_factory.mktemp("predict"), "lenet_300_100", "heterogeneous", "split")


def predict(*args: str | Path) -> None:
    cli_main(["predict", *map(str, args)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_image_folder_is_normalised_like_training_and_labels_are_mapped_back(trained, tmp_path):
    task = 2
    images = trained.dm.source.eval_dataset(task, "test").images[:12]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[0].numpy()).save(folder / f"digit_{i:02d}.png")
    predict("--bank", trained.bank, "--input", folder, "--task", task, "--output", tmp_path / "preds.csv")
    rows = read_csv(tmp_path / "preds.csv")
    info = trained.dm.provider.info
    x = NormalizeCollate(info.mean, info.std).normalize(images)
    bank = TaskBank.load(trained.bank)
    batch = next(input_batches(folder, bank, 64, bank.normalization)[1])[1]
    assert torch.equal(batch, x)  # exactly the tensors the training loader would have produced
    with torch.no_grad():
        outputs = trained.module.predict_task(x, task).tolist()
    assert [r["input"] for r in rows] == [f"digit_{i:02d}.png" for i in range(12)]
    assert [int(r["output"]) for r in rows] == outputs
    assert [int(r["label"]) for r in rows] == [trained.dm.label_maps[task][o] for o in outputs]
    assert {r["task"] for r in rows} == {str(task)}


def test_rgb_images_of_another_size_are_converted_to_the_input_shape(trained, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "rgb"
    folder.mkdir()
    pictures = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    for i, pic in enumerate(pictures):
        Image.fromarray(pic).save(folder / f"{i}.png")
    predict("--bank", trained.bank, "--input", folder, "--task", 0, "--output", tmp_path / "preds.json")
    rows = json.loads((tmp_path / "preds.json").read_text())
    gray = [np.array(Image.fromarray(p).convert("L").resize((8, 8), Image.Resampling.BILINEAR)) for p in pictures]
    images = torch.from_numpy(np.stack(gray)).unsqueeze(1)
    info = trained.dm.provider.info
    with torch.no_grad():
        expected = trained.module.predict_task(NormalizeCollate(info.mean, info.std).normalize(images), 0).tolist()
    assert [r["output"] for r in rows] == expected


def test_tensor_file_from_bank_and_from_checkpoint_agree_with_the_module(trained, tmp_path, capsys):
    x = torch.randn(10, *trained.dm.input_shape, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    predict("--bank", trained.bank, "--input", tmp_path / "x.pt", "--task", 1, "--batch_size", 4)
    from_bank = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    predict("--ckpt_path", trained.last, "--input", tmp_path / "x.pt", "--task", 1, "--output", tmp_path / "p.csv")
    with torch.no_grad():
        expected = trained.module.predict_task(x, 1).tolist()
    assert [int(r["output"]) for r in from_bank] == expected
    assert from_bank == read_csv(tmp_path / "p.csv")
    assert [r["input"] for r in from_bank] == [f"x.pt[{i}]" for i in range(10)]


@pytest.mark.parametrize("strategy", ["oneshot", "binary", "shortlist", "exhaustive"])
def test_inferred_task_classifies_the_batch_with_that_task(trained, tmp_path, strategy):
    x = next(iter(trained.dm.eval_dataloader(1)))[0][:16]
    torch.save(x, tmp_path / "x.pt")
    predict("--bank", trained.bank, "--input", tmp_path / "x.pt", "--infer", "--strategy", strategy,
            "--output", tmp_path / "p.csv")
    rows = read_csv(tmp_path / "p.csv")
    tasks = {int(r["task"]) for r in rows}
    assert len(tasks) == 1 and tasks <= {0, 1, 2}  # one batch, one inferred task
    task = tasks.pop()
    with torch.no_grad():
        assert [int(r["output"]) for r in rows] == trained.module.predict_task(x, task).tolist()
    assert [int(r["label"]) for r in rows] == [trained.dm.label_maps[task][int(r["output"])] for r in rows]


def test_predict_errors_are_one_line(trained, tmp_path):
    torch.save(torch.randn(2, 3, 8, 8), tmp_path / "wrong.pt")
    with pytest.raises(SystemExit, match=r"must hold one float tensor \[N, 1, 8, 8\]"):
        predict("--bank", trained.bank, "--input", tmp_path / "wrong.pt", "--task", 0)
    torch.save(torch.randn(2, 1, 8, 8), tmp_path / "x.pt")
    with pytest.raises(SystemExit, match=r"task 5 is not in this bank.*\[0, 1, 2\]"):
        predict("--bank", trained.bank, "--input", tmp_path / "x.pt", "--task", 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no image files"):
        predict("--bank", trained.bank, "--input", tmp_path / "empty", "--task", 0)
    with pytest.raises(SystemExit, match="does not exist"):
        predict("--bank", tmp_path / "missing.pt", "--input", tmp_path / "x.pt", "--task", 0)
    with pytest.raises(SystemExit, match="Lightning checkpoint"):
        predict("--bank", trained.last, "--input", tmp_path / "x.pt", "--task", 0)
    (tmp_path / "p.csv").write_text("earlier")
    with pytest.raises(SystemExit, match="already exists"):
        predict("--bank", trained.bank, "--input", tmp_path / "x.pt", "--task", 0, "--output", tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == "earlier"


def test_images_need_normalisation_constants(trained, tmp_path):
    bank = TaskBank.load(trained.bank)
    bank.normalization = None
    bank.save(tmp_path / "plain.pt")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "a.png")
    with pytest.raises(SystemExit, match="no normalisation constants: pass --mean and --std"):
        predict("--bank", tmp_path / "plain.pt", "--input", folder, "--task", 0)
    predict("--bank", tmp_path / "plain.pt", "--input", folder, "--task", 0, "--mean", "0.5", "--std", "0.5",
            "--output", tmp_path / "p.csv")
    x = torch.full((1, 1, 8, 8), -1.0)  # (0 / 255 - 0.5) / 0.5
    with torch.no_grad():
        assert int(read_csv(tmp_path / "p.csv")[0]["output"]) == trained.module.predict_task(x, 0).item()


def test_calibrated_inference_on_a_class_split_bank_uses_its_stored_baselines(trained, tmp_path):
    from impress_lightning.bank_model import TaskBankModel
    from impress_lightning.inference import TaskInference

    bank = TaskBank.load(trained.bank)
    recorded = trained.module.table.baseline_entropy[:3].tolist()
    assert bank.baseline_entropy == recorded and min(recorded) > 0  # measured when each task was learned
    model = TaskBankModel(bank)
    x = next(iter(trained.dm.eval_dataloader(1)))[0][:32]
    auto = model.infer(x, TaskInference(strategy="exhaustive"))  # split labels: the default calibrates
    raw = model.infer(x, TaskInference(strategy="exhaustive", calibrate="never"))
    with torch.no_grad():
        own = torch.stack([model(x, t)[:, :3].log_softmax(1).exp().mul(model(x, t)[:, :3].log_softmax(1)).sum(1)
                           .neg().mean().double() for t in range(3)])
    torch.testing.assert_close(raw.candidate_scores, own)
    torch.testing.assert_close(auto.candidate_scores, own - torch.tensor(recorded, dtype=torch.float64))
    assert auto.task == int((own - torch.tensor(recorded, dtype=torch.float64)).argmin())

    torch.save(x, tmp_path / "x.pt")  # a bank written before baselines existed (version 3) is refused there
    old = {**torch.load(trained.bank, weights_only=True), "format_version": 3}
    del old["baseline_entropy"]
    torch.save(old, tmp_path / "v3.pt")
    assert TaskBank.load(tmp_path / "v3.pt").baseline_entropy == []
    with pytest.raises(SystemExit, match="stores no entropy baseline for every task.*re-export it.*--calibrate never"):
        predict("--bank", tmp_path / "v3.pt", "--input", tmp_path / "x.pt", "--infer", "--strategy", "exhaustive")
    predict("--bank", tmp_path / "v3.pt", "--input", tmp_path / "x.pt", "--infer", "--strategy", "exhaustive",
            "--calibrate", "never", "--output", tmp_path / "p.csv")
    assert {int(r["task"]) for r in read_csv(tmp_path / "p.csv")} == {raw.task}
    with pytest.raises(SystemExit, match="feature signature, which this bank does not store"):
        predict("--bank", trained.bank, "--input", tmp_path / "x.pt", "--infer", "--strategy", "feature_match")


def test_feature_signatures_travel_from_training_to_predict(tmp_path_factory, tmp_path):
    import torch.nn.functional as F

    from impress_lightning.bank_model import TaskBankModel
    from impress_lightning.inference import TaskInference

    signed = train_stream(tmp_path_factory.mktemp("signed"), "lenet_300_100", "heterogeneous", "split",
                          feature_signatures=True)
    table, first = signed.module.table, signed.module.net.layers[0]
    assert table.has_signature.all() and table.feature_signatures.dtype == torch.float16
    with torch.no_grad():  # task 2 (a combination): its mean relu(first layer) over its own held-out examples
        x = torch.cat([x for x, _ in signed.dm.probe_loader(2)])
        weight = first.effective_weight(table.selection(2), 0)
        own = F.relu(F.linear(x.flatten(1), weight)).mean(0)
    torch.testing.assert_close(table.feature_signatures[2].float(), own, rtol=2e-3, atol=1e-3)
    width = first.weight.shape[0]
    plain = train_stream(tmp_path_factory.mktemp("plain"), "lenet_300_100", "heterogeneous", "split")
    unsigned = TaskBank.load(plain.bank)
    bank = TaskBank.load(signed.bank)
    assert tuple(bank.feature_signatures.shape) == (3, width) and unsigned.feature_signatures.numel() == 0
    assert bank.sizes()["signatures"] == 3 * width * 2  # one float16 per first-layer unit per task
    shapes = [layer.weight.numel() for layer in signed.module.net.layers]
    assert table.storage(2, shapes)["stored_bytes"] - table.coefficient_count(2) * table.rule.bytes_per_value == \
        2 * width
    batch = next(iter(signed.dm.eval_dataloader(1)))[0][:32]
    torch.save(batch, tmp_path / "x.pt")
    predict("--bank", signed.bank, "--input", tmp_path / "x.pt", "--infer", "--strategy", "feature_match",
            "--output", tmp_path / "p.csv")
    expected = TaskBankModel(bank).infer(batch, TaskInference(strategy="feature_match"))
    assert {int(r["task"]) for r in read_csv(tmp_path / "p.csv")} == {expected.task}
    assert [int(r["output"]) for r in read_csv(tmp_path / "p.csv")] == expected.logits.argmax(1).tolist()
    with pytest.raises(SystemExit, match="train with --model.feature_signatures true and re-export"):
        predict("--bank", plain.bank, "--input", tmp_path / "x.pt", "--infer", "--strategy", "feature_match")
