"""Accuracy against stored bytes for finished runs: the figure a reader of the paper wants.

    python -m impress_lightning.tools.plot_runs runs/rotated_mnist_lenet_supsup runs/rotated_mnist_lenet \\
        runs/rotated_mnist_lenet_paper --output docs/figures/rotated_mnist36_accuracy_vs_bytes.png

Each run directory's ``retention.json`` gives one point: the mean final accuracy over its tasks (the last row
of the accuracy matrix) against the bytes its tasks store (masks and coefficients; BN statistics excluded),
labelled with the run's name and its number of impressions. A table of the same numbers is printed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from jsonargparse import ArgumentParser

from impress_lightning.atomic import atomic_output


def run_point(run: Path) -> dict[str, Any]:
    """The numbers of one finished run: name, mean accuracy, bytes, impressions, tasks."""
    path = run / "retention.json"
    if not path.is_file():
        raise SystemExit(f"error: {run} holds no retention.json: give the directory of a finished fit")
    result = json.loads(path.read_text())
    final = [v for v in result["accuracy_matrix"][-1] if v is not None]
    tasks = result["tasks"]
    combos = [final[t["task"]] for t in tasks if t["kind"] == "combination" and t["task"] < len(final)]
    return {"run": run.name, "tasks": len(final), "impressions": sum(t["kind"] == "impression" for t in tasks),
            "mean_accuracy": math.fsum(final) / len(final),
            "combination_mean": math.fsum(combos) / len(combos) if combos else None,
            "stored_bytes": int(sum(t["stored_bytes"] for t in tasks))}


def plot(points: Sequence[dict[str, Any]], output: Path, title: str) -> Path:
    """Write the scatter plot of ``points`` to ``output`` (PNG), written to a temporary file and renamed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=110)
    ax = fig.add_subplot()
    markers = "osD^vP*Xh"
    for i, p in enumerate(points):
        ax.scatter(p["stored_bytes"] / 1e3, p["mean_accuracy"], s=50, marker=markers[i % len(markers)],
                   label=f"{p['run']}: {p['impressions']} impressions")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes of all tasks (kB, log scale; masks 1 bit per weight, coefficients)")
    ax.set_ylabel("mean final test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_output(output) as tmp:
        fig.savefig(tmp)
    return output


def table(points: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the points."""
    lines = ["| run | tasks | impressions | mean accuracy | combination mean | stored bytes |", "|---|---|---|---|---|---|"]
    for p in points:
        combo = "-" if p["combination_mean"] is None else f"{p['combination_mean']:.4f}"
        lines.append(f"| {p['run']} | {p['tasks']} | {p['impressions']} | {p['mean_accuracy']:.4f} | {combo} | "
                     f"{p['stored_bytes']:,} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = ArgumentParser(prog="python -m impress_lightning.tools.plot_runs",
                            description="Plot mean accuracy against stored bytes for finished runs.")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (each holding retention.json)")
    parser.add_argument("--output", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--title", default="accuracy against storage", help="figure title")
    args = parser.parse_args(argv)
    points = [run_point(Path(run)) for run in args.runs]
    plot(points, Path(args.output), args.title)
    print(table(points))
    print(f"wrote {args.output}")
    return points


if __name__ == "__main__":
    main()
