"""End-to-end benchmark: the wall time of whole tasks through ``fit`` against plain PyTorch loops, in one run.

Run: ``python bench/bench_fit.py --data-dir /tmp/data --run-dir /tmp/bench_fit [--network lenet_300_100] [--json out.json]``

A RotatedMNIST stream of ``--tasks`` tasks (default 3: two impressions, then one α-combination task), each of
``--epochs`` x ``--steps-per-epoch`` training steps (default 5 x 200 = 1,000, batch 128) with a validation pass
after every epoch and the test evaluation of the tasks the retention callback evaluates after it. Three ways
of running the same tasks on the same tensors, one after the other, ``--repeats`` times interleaved; each
counts the building of a task's tensors (rotating its images) in that task's time, as ``fit`` does:

- ``dense``: a plain PyTorch loop training a fresh dense network of the same shape per task (Adam), with the
  same validation and test passes: the reference;
- ``bare``: the same plain loop driving this library's model (``SupermaskNet``: top-k mask learning for an
  impression task, per-layer α over the stored impressions for a combination task), with no Lightning;
- ``fit``: ``impress-lightning fit`` of the same stream (LightningCLI, the stream's callbacks, a
  ModelCheckpoint and a TaskCheckpoint as in the shipped configs, CSV logging);
- ``fit_grouped`` (with ``--batches-per-step N`` > 1): the same fit with ``data.batches_per_step: N``, one
  Lightning training step running N optimisation batches (the same batches and results).

Per task kind it prints seconds per task and the ratios ``dense / fit`` (the speed of ``fit`` relative to a
plain dense loop; the target is >= 0.7), ``dense / fit_grouped`` and ``dense / bare``, and the share of
``fit``'s time spent outside the bare compute, ``(fit - bare) / fit``: the Lightning loop, callbacks, metrics,
logging, checkpoints and the probe of the stored impressions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_layers import synchronizer  # noqa: E402  (bench/ is not a package)
from bench_stream import per_task, run_fit  # noqa: E402

from impress_lightning.backbones import build_backbone, plain_backbone  # noqa: E402
from impress_lightning.callbacks import RetentionEvaluator  # noqa: E402
from impress_lightning.data import RotatedMNIST  # noqa: E402
from impress_lightning.nn import Combine, Impression, LearnMask, SupermaskNet, TopK  # noqa: E402

TARGET = 0.7  # dense / fit, asked for by the issue
Split = tuple[Tensor, Tensor]


def stream_config(args: argparse.Namespace, impressions: int, batches_per_step: int = 1) -> dict:
    """The ``fit`` config of the benchmarked stream."""
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": args.device, "devices": 1, "deterministic": True, "log_every_n_steps": 50,
                    "enable_progress_bar": args.progress_bar, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": "bench_fit", "version": ""}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": "link", "save_top_k": 1, "save_on_train_epoch_end": True}},
                                  {"class_path": "impress_lightning.callbacks.TaskCheckpoint"}]},
        "model": {"backbone": args.network, "num_impressions": impressions, "impression_source": "heterogeneous",
                  "mask_rule": {"class_path": "impress_lightning.nn.TopK", "init_args": {"density": args.density}},
                  "combination": {"class_path": "impress_lightning.nn.PerLayer"}, "cosine_schedule": False,
                  "impression_epochs": args.epochs, "combination_epochs": args.epochs,
                  "mask_optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}},
                  "alpha_optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.1}}},
        "data": {"class_path": "impress_lightning.data.RotatedMNIST",
                 "init_args": {"num_tasks": args.tasks, "data_dir": str(args.data_dir), "batch_size": args.batch,
                               "train_subset": args.batch * args.steps_per_epoch,
                               "batches_per_step": batches_per_step}},
        "retention": {"split": "test", "plots": False, "old_tasks": 0},
    }


def task_builder(args: argparse.Namespace) -> Callable[[int], dict[str, Split]]:
    """Builds one task's normalised train/val/test tensors exactly as the fit's datamodule does (rotating the
    images), from a fresh datamodule: the plain loops call it inside their timed task, as the fit builds each
    task's tensors inside its own."""
    dm = RotatedMNIST(num_tasks=args.tasks, data_dir=str(args.data_dir), batch_size=args.batch,
                      train_subset=args.batch * args.steps_per_epoch)
    dm.setup("fit")  # reads the MNIST files once, as the fit does before its first task
    device = torch.device(args.device)

    def build(task: int) -> dict[str, Split]:
        return {split: (dm.collate.normalize(images).to(device), labels.to(device))
                for split in ("train", "val", "test") for images, labels in [dm.source.tensors(task, split)]}

    return build


def accuracy(forward: Callable[[Tensor], Tensor], split: Split, batch: int) -> float:
    """Top-1 accuracy of ``forward`` over ``split`` in batches (no grad)."""
    correct = 0
    with torch.no_grad():
        for x, y in zip(split[0].split(batch), split[1].split(batch)):
            correct += int((forward(x).argmax(1) == y).sum())
    return correct / len(split[1])


def plain_task(forward: Callable[[Tensor], Tensor], opt: torch.optim.Optimizer, data: dict[str, Split],
               args: argparse.Namespace, seed: int) -> None:
    """``--epochs`` epochs of shuffled batches of ``data["train"]``, a validation pass after each."""
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = data["train"]
    for _ in range(args.epochs):
        for index in torch.randperm(len(y_all), generator=gen).to(x_all.device).split(args.batch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(x_all[index]), y_all[index]).backward()
            opt.step()
        accuracy(forward, data["val"], 512)


def run_plain(kind: str, impressions: int, args: argparse.Namespace) -> list[float]:
    """Seconds per task of the ``dense`` or ``bare`` plain loop over the whole stream, each task's time
    including the building of its tensors."""
    build, tasks = task_builder(args), []
    device, shape = torch.device(args.device), (1, 28, 28)
    retention = RetentionEvaluator(old_tasks=0)
    forwards: list[Callable[[Tensor], Tensor]] = []
    net = SupermaskNet(build_backbone(args.network, shape, 10, bank_capacity=impressions, num_tasks=args.tasks,
                                      seed=0)).to(device)
    rule, seconds, sync = TopK(args.density), [], synchronizer(device)
    for t in range(args.tasks):
        sync()
        start = time.perf_counter()
        data = build(t)
        tasks.append(data)
        if kind == "dense":
            model = plain_backbone(args.network, shape, 10).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            plain_task(model, opt, data, args, t)
            forwards.append(model)
        elif t < impressions:
            for layer in net.layers:
                layer.reset_scores(t)
            opt = torch.optim.Adam([layer.scores for layer in net.layers], lr=1e-3)
            plain_task(lambda x: net(x, LearnMask(rule)), opt, data, args, t)
            for layer in net.layers:
                layer.bank.add(rule(layer.scores).detach().bool())
            forwards.append(lambda x, slot=t: net(x, Impression(slot), cache_key=("impression", slot)))
        else:
            alpha = nn.Parameter(torch.full((net.num_layers, impressions), 1.0 / impressions, device=device))
            plain_task(lambda x: net(x, Combine(alpha)), torch.optim.Adam([alpha], lr=0.1), data, args, t)
            forwards.append(lambda x, a=alpha.detach(): net(x, Combine(a), cache_key=("task", id(a))))
        retention.matrix.append([0.0] * args.tasks)  # only its shape matters to tasks_to_evaluate
        for j in retention.tasks_to_evaluate(t, args.tasks):
            accuracy(forwards[j], tasks[j]["test"], 512)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def run_fit_stream(args: argparse.Namespace, impressions: int, repeat: int, batches_per_step: int = 1) -> list[float]:
    """Seconds per task of ``impress-lightning fit`` of the stream (a fresh run directory per repeat)."""
    run_dir = args.run_dir / (f"fit{repeat}" if batches_per_step == 1 else f"fit_grouped{repeat}")
    run_dir.mkdir(parents=True, exist_ok=False)
    config = run_dir / "config.yaml"
    config.write_text(yaml.safe_dump(stream_config(args, impressions, batches_per_step)))
    clock = run_dir / "task_clock.json"
    run_fit(str(config), run_dir, clock, [])
    return [row["seconds"] for row in per_task(json.loads(clock.read_text())["boundaries"])]


def summarise(times: dict[str, list[list[float]]], impressions: int) -> list[dict]:
    """Per task kind: median seconds per task of each way, and the ratios (medians of per-repeat ratios)."""
    rows = []
    for kind, tasks in (("impression", range(impressions)), ("combination", range(impressions, len(times["fit"][0])))):
        if not tasks:
            continue
        per_repeat = {way: [sum(run[t] for t in tasks) / len(tasks) for run in runs] for way, runs in times.items()}
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(per_repeat[a], per_repeat[b]))  # noqa: E731
        overhead = statistics.median((f - b) / f for f, b in zip(per_repeat["fit"], per_repeat["bare"]))
        row = {"kind": kind, **{f"{way}_seconds": statistics.median(v) for way, v in per_repeat.items()},
               "dense_over_fit": ratio("dense", "fit"), "dense_over_bare": ratio("dense", "bare"),
               "fit_overhead_share": overhead, "meets_target": ratio("dense", "fit") >= TARGET, "all": per_repeat}
        if "fit_grouped" in per_repeat:
            row["dense_over_fit_grouped"] = ratio("dense", "fit_grouped")
            row["grouped_meets_target"] = row["dense_over_fit_grouped"] >= TARGET
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with MNIST/raw")
    parser.add_argument("--run-dir", type=Path, required=True, help="fresh folder for the fit runs")
    parser.add_argument("--network", choices=["lenet_300_100", "fc1024"], default="lenet_300_100")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tasks", type=int, default=3, help="tasks in the stream (the last is a combination)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per task")
    parser.add_argument("--steps-per-epoch", type=int, default=200, help="training steps per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.5, help="top-k density of the masks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the three ways")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--batches-per-step", type=int, default=1,
                        help="> 1 adds the way fit_grouped: the fit with data.batches_per_step set to this")
    parser.add_argument("--progress-bar", action="store_true",
                        help="fit with its default (task-aware) progress bar, as a user's fit runs (drawn to stdout)")
    args = parser.parse_args(argv)
    if args.tasks < 2:
        parser.error(f"--tasks must be >= 2 (impressions, then a combination task), got {args.tasks}")
    if args.run_dir.exists() and any(args.run_dir.iterdir()):
        parser.error(f"--run-dir {args.run_dir} is not empty: pass a fresh folder")
    torch.set_num_threads(args.threads)
    impressions = args.tasks - 1
    if args.batches_per_step < 1:
        parser.error(f"--batches-per-step must be >= 1, got {args.batches_per_step}")
    ways = {"dense": lambda r: run_plain("dense", impressions, args),
            "bare": lambda r: run_plain("bare", impressions, args),
            "fit": lambda r: run_fit_stream(args, impressions, r)}
    if args.batches_per_step > 1:
        ways["fit_grouped"] = lambda r: run_fit_stream(args, impressions, r, args.batches_per_step)
    times: dict[str, list[list[float]]] = {way: [] for way in ways}
    for r in range(args.repeats):
        names = list(ways)
        for way in names[r % len(names):] + names[: r % len(names)]:  # rotate: load drift hits every way alike
            times[way].append(ways[way](r))
    rows = summarise(times, impressions)
    print(f"{args.network}, RotatedMNIST {args.tasks} tasks x {args.epochs * args.steps_per_epoch} steps "
          f"(batch {args.batch}), device {args.device}, threads {args.threads}, {args.repeats} repeats")
    grouped = args.batches_per_step > 1
    print(f"{'task kind':<12} {'dense s':>8} {'bare s':>8} {'fit s':>8} {'dense/fit':>10} {'dense/bare':>11} "
          f"{'fit overhead':>13}" + (f" {'grouped s':>10} {'dense/grouped':>14}" if grouped else ""))
    for row in rows:
        line = (f"{row['kind']:<12} {row['dense_seconds']:>8.1f} {row['bare_seconds']:>8.1f} "
                f"{row['fit_seconds']:>8.1f} {row['dense_over_fit']:>9.2f}x {row['dense_over_bare']:>10.2f}x {row['fit_overhead_share']:>12.0%}")
        if grouped:
            line += f" {row['fit_grouped_seconds']:>10.1f} {row['dense_over_fit_grouped']:>13.2f}x"
        verdicts = [f"fit {'ok' if row['meets_target'] else 'MISS'}"] + (
            [f"grouped {'ok' if row['grouped_meets_target'] else 'MISS'}"] if grouped else [])
        print(f"{line}  (target dense/fit >= {TARGET}: {', '.join(verdicts)})")
    if grouped:
        print(f"grouped: data.batches_per_step = {args.batches_per_step}")
    result = {"config": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__, "rows": rows,
              "seconds_per_task": times}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
