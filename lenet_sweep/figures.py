"""Drawing only: learning-curve figures for a run (``job``) and for the report's configurations (``report``).

The figures are like the writeup's two per model: loss and accuracy against epoch.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no display
needed): ``savefig`` renders PNG with the Agg backend, and MLflow's
``client.log_figure`` accepts the returned figure as it is. A sweep draws one curves
figure per run and one per configuration, and making a figure (axes, ticks, a
layout fitted to them) costs more than drawing it, so ``CurvesFigure`` is made once
and drawn again for each curves, on fixed margins that fit every tick label.

A *curves* argument is any mapping from a column name to a sequence: a pandas
DataFrame or a dict of lists. It must hold ``epoch`` and the metric columns
(``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``); an optional
``<metric>_std`` column draws a +-1 std band around that metric.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (
    ("loss", ("train_loss", "test_loss")),
    ("accuracy (%)", ("train_acc", "test_acc")),
)
DPI = 100


def _has(curves: Mapping[str, Sequence[float]], key: str) -> bool:
    return key in curves and len(curves[key]) > 0


def _draw(ax, curves: Mapping[str, Sequence[float]], key: str, label: str, color: str) -> None:
    """One mean line, with a +-1 std band where ``<key>_std`` is given and finite."""
    epochs = [float(e) for e in curves["epoch"]]
    mean = [float(v) for v in curves[key]]
    marker = "o" if len(epochs) <= 20 else None
    ax.plot(epochs, mean, color=color, label=label, marker=marker, markersize=3)
    std_key = f"{key}_std"
    if _has(curves, std_key):
        std = [float(s) for s in curves[std_key]]
        if any(s == s for s in std):  # not all NaN (NaN != NaN): more than one seed
            low = [m - s for m, s in zip(mean, std)]
            high = [m + s for m, s in zip(mean, std)]
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)


class CurvesFigure:
    """The two-panel curves figure (``plot_curves``), made once and drawn again by each ``draw``."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(10, 4), dpi=DPI)
        FigureCanvasAgg(self.figure)  # its own canvas: each draw reuses the renderer and its text metrics
        # Fixed margins (a layout engine would fit them again at every draw), wide enough for the longest
        # tick labels matplotlib writes before it switches to an offset or a power of ten: -0.00062.
        self.figure.subplots_adjust(left=0.1, right=0.985, bottom=0.12, top=0.85, wspace=0.3)
        self.axes = self.figure.subplots(1, 2)
        for ax, (ylabel, _) in zip(self.axes, PANELS):
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(ylabel.split(" ")[0])
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        self.title = self.figure.suptitle("")

    def draw(self, curves: Mapping[str, Sequence[float]], title: str) -> Figure:
        """The figure showing ``curves`` under ``title``; the next ``draw`` replaces what it shows."""
        for ax, (_, keys) in zip(self.axes, PANELS):
            for artist in [*ax.lines, *ax.collections]:
                artist.remove()
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            ax.relim()  # forget the previous curves' data limits
            for key, color in zip(keys, ("C0", "C1")):
                if _has(curves, key):
                    _draw(ax, curves, key, key.split("_")[0], color)
            if ax.lines:
                ax.legend()
        self.title.set_text(title)
        return self.figure


def plot_curves(curves: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Two panels: train/test loss and train/test accuracy against epoch (bands: +-1 std over seeds)."""
    return CurvesFigure().draw(curves, title)


def plot_overview(
    curves_by_label: Mapping[str, Mapping[str, Sequence[float]]], metric: str = "test_acc", title: str = "test accuracy"
) -> Figure:
    """Every configuration's ``metric`` against epoch in one panel (bands: +-1 std over seeds)."""
    fig = Figure(figsize=(8, 5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for i, (label, curves) in enumerate(curves_by_label.items()):
        if _has(curves, metric):
            _draw(ax, curves, metric, label, f"C{i % 10}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_acc", " accuracy (%)").replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def history_to_curves(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """A job's history (``[{"epoch": 1, "train_loss": ..., ...}, ...]``) as curves, sorted by epoch."""
    rows = sorted(history, key=lambda entry: entry["epoch"])
    keys = {key for entry in rows for key in entry}
    return {key: [entry.get(key, float("nan")) for entry in rows] for key in keys}


@functools.cache
def _run_curves_figure() -> CurvesFigure:
    return CurvesFigure()


def plot_run_curves(history: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """One run's learning curves from its per-epoch history, for ``client.log_figure``.

    Every run of the process is drawn on one figure: save or log it before the next call.
    """
    return _run_curves_figure().draw(history_to_curves(history), title)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


# --- the report's figures -------------------------------------------------------


def figure_names(labels: Sequence[str]) -> dict[str, str]:
    """A distinct, filesystem-safe PNG name per configuration label (``curves_lenet_reg_flip.png``)."""
    names: dict[str, str] = {}
    for label in labels:
        base = "curves_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") or "all")
        name, i = f"{base}.png", 2
        while name in names.values():
            name, i = f"{base}_{i}.png", i + 1
        names[label] = name
    return names


def write_figures(out_dir: Path, rows: Sequence[tuple[str, int]], curves: Mapping[str, Any]) -> dict[str, str]:
    """Per-configuration curves and ``overview_test_acc.png`` into ``out_dir``; returns label -> file name.

    ``rows`` are (label, seeds) in table order; a configuration without any logged metric gets no
    figure. Curve files of an earlier report in ``out_dir`` are removed first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("curves_*.png"):
        stale.unlink()
    names, written, figure = figure_names([label for label, _ in rows]), {}, CurvesFigure()
    for label, seeds in rows:
        curve = curves[label]
        if any(curve[key].notna().any() for _, keys in PANELS for key in keys):
            spread = f"{seeds} seeds, mean ± 1 std" if seeds > 1 else "1 seed"
            save_figure(figure.draw(curve, f"{label} ({spread})"), out_dir / names[label])
            written[label] = names[label]
    overview = plot_overview({label: curves[label] for label in written}, title="test accuracy, every configuration")
    save_figure(overview, out_dir / "overview_test_acc.png")
    return written
