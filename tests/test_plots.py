"""Accuracy-matrix and α figures: files, pixel sizes, masked cells, labels, bad input, no pyplot leaks."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from impress_lightning.plots import (
    figure_accuracy_matrix,
    figure_alpha,
    figure_to_array,
    plot_accuracy_matrix,
    plot_alpha,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
R_PARTIAL = [[1.0, None, None, None], [0.9, 0.8, None, None], [0.85, 0.75, 0.7, None]]
KINDS = ["impression", "impression", "combination", "combination"]


def _png_shape(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    return image.shape[0], image.shape[1]


def _pixel_at(fig: Figure, ax, x: float, y: float) -> np.ndarray:
    """RGB (0..1) of the rendered pixel at data coordinates (x, y) of ``ax``."""
    pixels = figure_to_array(fig)
    px, py = ax.transData.transform((x, y))
    return pixels[pixels.shape[0] - int(round(py)), int(round(px))] / 255.0


def test_accuracy_matrix_png_has_requested_size(tmp_path: Path) -> None:
    path = plot_accuracy_matrix(R_PARTIAL, KINDS, tmp_path / "sub" / "retention.png", dpi=50, figsize=(4, 3))
    assert path == tmp_path / "sub" / "retention.png"
    assert _png_shape(path) == (150, 200)


def test_accuracy_matrix_default_size_matches_figure(tmp_path: Path) -> None:
    fig = figure_accuracy_matrix(R_PARTIAL, KINDS)
    width, height = fig.get_size_inches() * fig.dpi
    path = plot_accuracy_matrix(R_PARTIAL, KINDS, tmp_path / "retention.png")
    assert _png_shape(path) == (round(height), round(width))


def test_none_cells_are_masked_and_values_annotated() -> None:
    fig = figure_accuracy_matrix(R_PARTIAL, KINDS, dpi=60)
    ax = fig.axes[0]
    # Sample off-centre so the annotation text does not cover the pixel.
    unseen = _pixel_at(fig, ax, 3 - 0.35, 0 - 0.35)
    perfect = _pixel_at(fig, ax, 0 - 0.35, 0 - 0.35)
    assert unseen == pytest.approx(to_rgb("#e0e0e0"), abs=0.02)
    assert perfect == pytest.approx(plt.get_cmap("viridis")(1.0)[:3], abs=0.02)
    texts = sorted(t.get_text() for t in ax.texts)
    expected = sorted(f"{v:.2f}" for row in R_PARTIAL for v in row if v is not None)
    assert texts == expected


def test_kind_marks_on_tick_labels() -> None:
    fig = figure_accuracy_matrix(R_PARTIAL, KINDS)
    labels = fig.axes[0].get_xticklabels()
    assert [label.get_text() for label in labels] == ["I0", "I1", "C2", "C3"]
    assert labels[0].get_color() != labels[2].get_color()
    plain = figure_accuracy_matrix(R_PARTIAL, None)
    assert [label.get_text() for label in plain.axes[0].get_xticklabels()] == ["0", "1", "2", "3"]


def test_title_reports_metrics() -> None:
    title = figure_accuracy_matrix([[0.9, None], [0.6, 0.8]]).axes[0].get_title()
    assert "avg acc 0.700" in title and "BWT -0.300" in title


def test_single_task_matrix(tmp_path: Path) -> None:
    path = plot_accuracy_matrix([[0.97]], ["impression"], tmp_path / "one.png", dpi=40, figsize=(5, 4))
    assert _png_shape(path) == (160, 200)


def test_large_matrix_is_not_annotated() -> None:
    n = 25
    R = [[0.5 if j <= i else None for j in range(n)] for i in range(n)]
    fig = figure_accuracy_matrix(R, ["impression"] * 5 + ["combination"] * 20, dpi=30)
    assert len(fig.axes[0].texts) == 0


@pytest.mark.parametrize(
    ("kinds", "match"),
    [(["impression"] * 3, "3 entries but .* 4 task columns"), (["impression"] * 3 + ["mask"], r"kinds\[3\]")],
)
def test_bad_kinds_rejected(kinds: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        figure_accuracy_matrix(R_PARTIAL, kinds)


def test_bad_matrix_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ragged"):
        plot_accuracy_matrix([[0.9, None], [0.8]], None, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_alpha_png_and_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    alpha = {7: rng.normal(size=(3, 4)), 5: rng.normal(size=(3, 4))}
    path = plot_alpha(alpha, tmp_path / "alpha.png", ["fc1", "fc2", "out"], dpi=50, figsize=(6, 3))
    assert _png_shape(path) == (150, 300)

    fig = figure_alpha(alpha, ["fc1", "fc2", "out"])
    ax = fig.axes[0]
    # Rows in task order, columns (layer, impression) flattened layer-major.
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shown, np.stack([alpha[5].reshape(-1), alpha[7].reshape(-1)]))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["task 5", "task 7"]
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["fc1", "fc2", "out"]
    # Symmetric colour scale around 0, so the sign of α is readable.
    vmin, vmax = ax.images[0].get_clim()
    assert vmin == -vmax == -np.abs(shown).max()


def test_alpha_global_and_tensor_input() -> None:
    alpha = {3: torch.full((4,), 0.25, requires_grad=True), 4: torch.tensor([0.1, 0.2, 0.3, 0.4])}
    fig = figure_alpha(alpha)
    ax = fig.axes[0]
    assert np.asarray(ax.images[0].get_array()).shape == (2, 4)
    assert [t.get_text() for t in ax.child_axes[0].get_xticklabels()] == ["all layers"]
    assert figure_to_array(fig).shape[:2] == tuple(round(v) for v in fig.get_size_inches()[::-1] * fig.dpi)


def test_alpha_many_tasks_stays_bounded() -> None:
    alpha = {t: np.full((4, 10), 0.1) for t in range(10, 46)}
    fig = figure_alpha(alpha, dpi=20)
    width, height = fig.get_size_inches()
    assert width <= 24 and height <= 14
    assert len(fig.axes[0].texts) == 0  # 1440 cells: too many to annotate
    assert len(fig.axes[0].get_yticklabels()) == 36


@pytest.mark.parametrize(
    ("alpha", "names", "match"),
    [
        ({}, None, "non-empty"),
        ({0: np.ones((2, 3)), 1: np.ones((3, 3))}, None, "same"),
        ({0: np.ones((2, 3, 1))}, None, "shape"),
        ({0: np.array([0.1, np.nan])}, None, "NaN"),
        ({-1: np.ones(3)}, None, "task ids"),
        ({0: np.ones((2, 3))}, ["only one"], "layer_names has 1"),
    ],
)
def test_bad_alpha_rejected(alpha: dict, names: list[str] | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        figure_alpha(alpha, names)


def test_no_pyplot_figures_leak(tmp_path: Path) -> None:
    before = plt.get_fignums()
    plot_accuracy_matrix(R_PARTIAL, KINDS, tmp_path / "a.png", dpi=30)
    plot_alpha({1: np.ones((2, 2))}, tmp_path / "b.png", dpi=30)
    assert plt.get_fignums() == before
