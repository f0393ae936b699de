"""Figures of a continual-learning run: the accuracy matrix and the learned α coefficients.

Every figure is a bare :class:`matplotlib.figure.Figure` drawn on an Agg canvas, never registered with
``pyplot``: nothing opens a window, no global backend is switched, and a figure is freed as soon as the
caller drops it (no ``plt.close`` bookkeeping, no leak across a long run). ``figure_*`` functions return the
figure for a logger (``wandb.Image(fig)``, or :func:`figure_to_array` for TensorBoard); ``plot_*`` functions
save it and return the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from impress_lightning.atomic import atomic_output
from impress_lightning.metrics import AccuracyMatrix, latest_measured, summarise, validate_matrix

TASK_KINDS = ("impression", "combination", "pending")  # pending: an adaptive-bank task not started yet
_KIND_STYLE = {"impression": ("I", "tab:blue"), "combination": ("C", "tab:orange"), "pending": ("?", "tab:gray")}
ANNOTATE_MAX_TASKS = 20  # above this the "0.97" labels no longer fit in a cell
_ANNOTATE_MAX_ALPHA_CELLS = 160


def _new_figure(figsize: tuple[float, float], dpi: int) -> Figure:
    """A pyplot-free figure on its own Agg canvas."""
    if dpi <= 0 or min(figsize) <= 0:
        raise ValueError(f"figsize {figsize} and dpi {dpi} must be positive")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG by default) at the figure's own size and dpi."""
    # No bbox_inches="tight": the saved image keeps exactly figsize * dpi pixels.
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=fig.dpi)
    return Path(path)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an RGB ``uint8`` array of shape [height, width, 3] (for image loggers)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _check_kinds(kinds: Sequence[str] | None, width: int) -> list[str] | None:
    if kinds is None:
        return None
    kinds = list(kinds)
    if len(kinds) != width:
        raise ValueError(f"kinds has {len(kinds)} entries but the accuracy matrix has {width} task columns")
    for j, kind in enumerate(kinds):
        if kind not in TASK_KINDS:
            raise ValueError(f"kinds[{j}] = {kind!r} must be one of {TASK_KINDS}")
    return kinds


def figure_accuracy_matrix(R: AccuracyMatrix, kinds: Sequence[str] | None = None, *, dpi: int = 100,
                           figsize: tuple[float, float] | None = None) -> Figure:
    """Heatmap of the accuracy matrix ``R`` (rows: after training task i, columns: accuracy on task j).

    Args:
        R: accuracy matrix, see :mod:`impress_lightning.metrics`; ``None`` cells are drawn grey.
        kinds: per column, "impression" or "combination"; marks the tick labels (I/C) and draws a line
            where the kind changes.
        dpi: pixels per inch of the figure.
        figsize: (width, height) in inches; default grows with the number of tasks.
    """
    rows = validate_matrix(R, allow_gaps=True)  # cells not re-evaluated are drawn grey
    n_rows, n_cols = len(rows), len(rows[0])
    kinds = _check_kinds(kinds, n_cols)
    annotate = max(n_rows, n_cols) <= ANNOTATE_MAX_TASKS
    cell = 0.45 if annotate else 0.28  # inches per cell
    if figsize is None:
        figsize = (float(np.clip(2.6 + cell * n_cols, 4.5, 16.0)), float(np.clip(1.6 + cell * n_rows, 3.0, 14.0)))
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()

    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label="accuracy", fraction=0.08, pad=0.02)

    if annotate:
        size = 8 if max(n_rows, n_cols) <= 10 else 6
        for i in range(n_rows):
            for j in range(n_cols):
                if not np.isnan(values[i, j]):
                    # Dark text on the bright (high-accuracy) end of viridis, white on the dark end.
                    color = "black" if values[i, j] > 0.6 else "white"
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size, color=color)

    tick_size = 8 if n_cols <= ANNOTATE_MAX_TASKS else 6
    ax.set_xticks(range(n_cols))
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([str(i) for i in range(n_rows)], fontsize=tick_size)
    if kinds is None:
        ax.set_xticklabels([str(j) for j in range(n_cols)], fontsize=tick_size)
        ax.set_xlabel("task j")
    else:
        ax.set_xticklabels([f"{_KIND_STYLE[k][0]}{j}" for j, k in enumerate(kinds)], fontsize=tick_size,
                           rotation=90 if n_cols > ANNOTATE_MAX_TASKS else 0)
        for label, kind in zip(ax.get_xticklabels(), kinds):
            label.set_color(_KIND_STYLE[kind][1])
        for j in range(1, n_cols):
            if kinds[j] != kinds[j - 1]:
                ax.axvline(j - 0.5, color="white", linewidth=2.0)
        ax.set_xlabel("task j  (I = impression, C = combination)")
    ax.set_ylabel("after training task i")

    stats = summarise(latest_measured(rows))  # the same figures as retention.json
    progress = "" if n_rows == n_cols else f"{n_rows}/{n_cols} tasks, "
    ax.set_title(f"Accuracy matrix ({progress}avg acc {stats['average_accuracy']:.3f}, "
                 f"BWT {stats['bwt']:+.3f}, forgetting {stats['forgetting']:.3f})", fontsize=9)
    return fig


def plot_accuracy_matrix(R: AccuracyMatrix, kinds: Sequence[str] | None, path: str | Path, *, dpi: int = 100,
                         figsize: tuple[float, float] | None = None) -> Path:
    """Save :func:`figure_accuracy_matrix` to ``path`` (PNG unless the suffix says otherwise); return the path."""
    return _save(figure_accuracy_matrix(R, kinds, dpi=dpi, figsize=figsize), path)


def _to_numpy(value: Any, task: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=float)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"alpha[{task}] has shape {array.shape}: expected [layers, impressions] or [impressions]")
    if not np.isfinite(array).all():
        raise ValueError(f"alpha[{task}] contains NaN or inf")
    return array if array.ndim == 2 else array[None, :]


def _stack_alpha(alpha: Mapping[int, Any]) -> tuple[list[int], np.ndarray]:
    """Task ids (sorted) and their α as one array [tasks, layers, impressions]."""
    if not isinstance(alpha, Mapping) or len(alpha) == 0:
        raise ValueError("alpha must be a non-empty dict {task id: α array}: plot it once a combination task "
                         "is trained")
    for task in alpha:
        if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or task < 0:
            raise ValueError(f"alpha keys must be non-negative task ids, got {task!r}")
    tasks = sorted(int(t) for t in alpha)
    arrays = [_to_numpy(alpha[t], t) for t in tasks]
    shape = arrays[0].shape
    for task, array in zip(tasks, arrays):
        if array.shape != shape:
            raise ValueError(f"alpha[{task}] has shape {array.shape} but alpha[{tasks[0]}] has {shape}: "
                             "all tasks need the same [layers, impressions] granularity")
    return tasks, np.stack(arrays)


def figure_alpha(alpha: Mapping[int, Any], layer_names: Sequence[str] | None = None, *, dpi: int = 100,
                 figsize: tuple[float, float] | None = None) -> Figure:
    """Heatmap of learned α: one row per combination task, one column per (layer, impression).

    Args:
        alpha: task id -> α of shape [layers, impressions] (per-layer) or [impressions] (global); numpy
            arrays, lists or tensors.
        layer_names: one name per layer (default "layer 0", ...; "all layers" for global α).
        dpi: pixels per inch of the figure.
        figsize: (width, height) in inches; default grows with tasks and columns.
    """
    tasks, stacked = _stack_alpha(alpha)
    n_tasks, n_layers, n_imp = stacked.shape
    if layer_names is None:
        layer_names = ["all layers"] if n_layers == 1 else [f"layer {l}" for l in range(n_layers)]
    layer_names = [str(name) for name in layer_names]
    if len(layer_names) != n_layers:
        raise ValueError(f"layer_names has {len(layer_names)} entries but alpha has {n_layers} layers")
    n_cols = n_layers * n_imp
    if figsize is None:
        figsize = (float(np.clip(2.8 + 0.22 * n_cols, 5.0, 24.0)), float(np.clip(2.0 + 0.3 * n_tasks, 3.0, 14.0)))
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()

    values = stacked.reshape(n_tasks, n_cols)
    # α is unconstrained, so a diverging map centred on 0 shows both size and sign.
    limit = float(np.abs(values).max()) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="α", fraction=0.06, pad=0.02)
    if values.size <= _ANNOTATE_MAX_ALPHA_CELLS:
        for r in range(n_tasks):
            for c in range(n_cols):
                color = "white" if abs(values[r, c]) > 0.6 * limit else "black"
                ax.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize=6, color=color)

    for l in range(1, n_layers):
        ax.axvline(l * n_imp - 0.5, color="black", linewidth=1.5)
    tick_size = 8 if max(n_tasks, n_cols) <= 40 else 6
    ax.set_yticks(range(n_tasks))
    ax.set_yticklabels([f"task {t}" for t in tasks], fontsize=tick_size)
    ax.set_ylabel("combination task")
    if n_cols <= 80:
        ax.set_xticks(range(n_cols))
        ax.set_xticklabels([str(c % n_imp) for c in range(n_cols)], fontsize=tick_size)
        ax.set_xlabel("impression k")
    else:  # too many columns to label each one: the layer names on top are enough
        ax.set_xticks([])
        ax.set_xlabel(f"impression k (0..{n_imp - 1} within each layer)")
    top = ax.secondary_xaxis("top")
    top.set_xticks([l * n_imp + (n_imp - 1) / 2 for l in range(n_layers)])
    top.set_xticklabels(layer_names, fontsize=tick_size, rotation=90 if n_layers > 8 else 0)
    top.tick_params(length=0)
    ax.set_title(f"Learned α ({n_tasks} tasks × {n_layers} layers × {n_imp} impressions)", fontsize=9)
    return fig


def plot_alpha(alpha: Mapping[int, Any], path: str | Path, layer_names: Sequence[str] | None = None, *,
               dpi: int = 100, figsize: tuple[float, float] | None = None) -> Path:
    """Save :func:`figure_alpha` to ``path`` (PNG unless the suffix says otherwise); return the path."""
    return _save(figure_alpha(alpha, layer_names, dpi=dpi, figsize=figsize), path)
