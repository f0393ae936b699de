"""Stream scale benchmark: wall seconds and memory of every task of one long ``fit``, against T.

Run: ``python bench/bench_stream.py --run-dir /tmp/stream250 --json results/stream.json --plot docs/figures/stream_scale.png``
(extra arguments after ``--`` go to ``impress-lightning fit``, e.g. ``-- --data.init_args.data_dir /tmp/data``).
Re-draw the figure from a finished JSON: ``python bench/bench_stream.py --from-json results/stream.json --plot out.png``.

The fit runs in this process through the project's CLI, with one extra callback, :class:`TaskClock`, which
records at the first epoch of every task (and at the end of training) the time and the process's resident
memory. A task's wall seconds are therefore everything between the start of its training and the start of
the next task's: training, its retention evaluation, checkpointing and the loader rebuild.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import lightning as L

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


class TaskClock(L.Callback):
    """Writes ``{"boundaries": [[task, seconds since fit start, resident bytes], ...]}`` to ``path`` at the
    start of each task's first epoch and once at the end of training.

    Args:
        path: JSON file to (re)write after every task.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.boundaries: list[list[float]] = []
        self._origin = time.perf_counter()
        self._last_task: int | None = None

    def _record(self, task: int) -> None:
        self.boundaries.append([task, time.perf_counter() - self._origin, resident_bytes()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"boundaries": self.boundaries}))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        task = pl_module.current_stage.task
        if task != self._last_task:
            self._last_task = task
            self._record(task)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(-1)


def per_task(boundaries: list[list[float]]) -> list[dict]:
    """One row per task: its wall seconds (to the next boundary) and the resident memory when it ended."""
    return [{"task": int(a[0]), "seconds": b[1] - a[1], "resident_mib": b[2] / 2**20}
            for a, b in zip(boundaries, boundaries[1:])]


def attach_retention(rows: list[dict], retention: dict) -> None:
    """Add each task's kind and training seconds (from the run's retention.json) to its row; the rest of
    the wall seconds (``other_seconds``) is the retention evaluation, checkpointing and the loader rebuild."""
    for row in rows:
        task = retention["tasks"][row["task"]]
        row.update(kind=task["kind"], train_seconds=task["seconds"], other_seconds=row["seconds"] - task["seconds"])


def flatness(rows: list[dict], key: str) -> dict:
    """Median of ``key`` over the first and the last quarter of the combination tasks, and their ratio."""
    # The last task evaluates every task once (the full final row): not a per-task cost.
    body = [r for r in rows[:-1] if r["kind"] == "combination"]
    quarter = max(1, len(body) // 4)
    first = statistics.median(r[key] for r in body[:quarter])
    last = statistics.median(r[key] for r in body[-quarter:])
    return {"first_quarter_median": first, "last_quarter_median": last, "last_over_first": last / first}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Seconds per task and resident memory against the task index (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [r["task"] for r in rows]
    fig, (ax_time, ax_mem) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, label in (("seconds", "wall (all)"), ("train_seconds", "training"),
                       ("other_seconds", "evaluation, checkpoint, loaders")):
        ax_time.plot(tasks, [r[key] for r in rows], ".", markersize=3, label=label)
    ax_time.legend(fontsize=8, markerscale=3)
    ax_time.set_ylabel("seconds per task")
    ax_time.set_yscale("log")
    ax_time.set_title(title, fontsize=9)
    ax_mem.plot(tasks, [r["resident_mib"] for r in rows], "-")
    ax_mem.set_ylabel("resident memory (MiB)")
    ax_mem.set_xlabel("task T")
    for ax in (ax_time, ax_mem):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_fit(config: str, run_dir: Path, clock_path: Path, extra: list[str]) -> float:
    """Fit ``config`` with a :class:`TaskClock` into a fresh ``run_dir``; the wall seconds of the whole call."""
    from impress_lightning.cli import main as cli_main

    start = time.perf_counter()
    cli_main(["fit", "--config", config, "--trainer.logger.init_args.save_dir", str(run_dir),
              "--trainer.callbacks+=bench_stream.TaskClock", f"--trainer.callbacks.path={clock_path}", *extra])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/rotated_mnist_lenet_250.yaml", help="fit config")
    parser.add_argument("--run-dir", type=Path, default=None, help="fresh directory for the run's outputs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (sets the fit's trainer.accelerator)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write per-task rows and the summary here")
    parser.add_argument("--plot", type=Path, default=None, help="write the seconds/memory-per-task PNG here")
    parser.add_argument("--from-json", type=Path, default=None, help="skip the fit: summarise/plot this JSON")
    parser.add_argument("--retention", type=Path, default=None,
                        help="with --from-json: the run's retention.json, for JSON written without training seconds")
    parser.add_argument("--bin", type=int, default=25, help="tasks per row of the printed table")
    parser.add_argument("fit_args", nargs="*", help="after --: more arguments for `impress-lightning fit`")
    args = parser.parse_args(argv)

    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        if args.retention is not None:
            attach_retention(result["rows"], json.loads(args.retention.read_text()))
    else:
        if args.run_dir is None:
            parser.error("--run-dir is required (a fresh directory) unless --from-json is given")
        import torch

        torch.set_num_threads(args.threads)
        clock_path = args.run_dir / "task_clock.json"
        accelerator = ["--trainer.accelerator", "gpu" if args.device.startswith("cuda") else args.device]
        total = run_fit(args.config, args.run_dir, clock_path, [*accelerator, *args.fit_args])
        rows = per_task(json.loads(clock_path.read_text())["boundaries"])
        attach_retention(rows, json.loads(next(args.run_dir.rglob("retention.json")).read_text()))
        result = {"config": args.config, "fit_args": args.fit_args, "threads": args.threads, "device": args.device,
                  "fit_seconds": total, "peak_resident_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": rows}
    rows = result["rows"]
    for key in ("seconds", "train_seconds", "other_seconds", "resident_mib"):
        result[key] = flatness(rows, key)
        print(f"{key:<14} median over the first / last quarter of the combination tasks: "
              f"{result[key]['first_quarter_median']:8.2f} / {result[key]['last_quarter_median']:8.2f} "
              f"({result[key]['last_over_first']:.2f}x)")
    print(f"{'tasks':<9} {'wall s':>7} {'train s':>8} {'other s':>8} {'other/train':>12} {'resident MiB':>13}  (medians)")
    for start in range(0, len(rows) - 1, args.bin):
        part = rows[start: min(start + args.bin, len(rows) - 1)]
        med = {key: statistics.median(r[key] for r in part) for key in ("seconds", "train_seconds", "other_seconds")}
        print(f"{part[0]['task']:>3}-{part[-1]['task']:<5} {med['seconds']:>7.2f} {med['train_seconds']:>8.2f} "
              f"{med['other_seconds']:>8.2f} {statistics.median(r['other_seconds'] / r['train_seconds'] for r in part):>12.2f}"
              f" {part[-1]['resident_mib']:>13.0f}")
    print(f"{len(rows)} tasks in {result['fit_seconds']:.0f} s; the last task (evaluates all) {rows[-1]['seconds']:.1f} s; "
          f"peak resident {result['peak_resident_mib']:.0f} MiB")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot is not None:
        plot(rows, args.plot, f"{Path(result['config']).name}: {len(rows)} tasks, {result['fit_seconds']:.0f} s "
             f"in one fit, {result['threads']} thread(s)")
    return result


if __name__ == "__main__":
    main()
