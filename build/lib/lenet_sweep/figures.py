"""Rendering for the report: learning-curve figures, the markdown table and the ``report.md`` page.

The figures are like the writeup's two per model: loss and accuracy against epoch.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global
state, no display needed): ``savefig`` renders PNG with the Agg backend, and MLflow's
``client.log_figure`` accepts the returned figure as it is.

A *curves* argument is any mapping from a column name to a sequence: a pandas
DataFrame or a dict of lists. It must hold ``epoch`` and the metric columns
(``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``); an optional
``<metric>_std`` column draws a +-1 std band around that metric.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

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


def plot_curves(curves: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Two panels: train/test loss and train/test accuracy against epoch (bands: +-1 std over seeds)."""
    fig = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (ylabel, keys) in zip(axes, PANELS):
        for key, color in zip(keys, ("C0", "C1")):
            if _has(curves, key):
                _draw(ax, curves, key, key.split("_")[0], color)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" ")[0])
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    return fig


def plot_overview(curves_by_label: Mapping[str, Mapping[str, Sequence[float]]], metric: str = "test_acc",
                  title: str = "test accuracy") -> Figure:
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


def plot_run_curves(history: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """One run's learning curves from its per-epoch history, for ``client.log_figure``."""
    return plot_curves(history_to_curves(history), title)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def save_run_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """``plot_run_curves`` written to ``path`` as PNG."""
    return save_figure(plot_run_curves(history, title), path)


# --- the report's files ----------------------------------------------------------------

DIGITS = {"train_loss": 4, "train_acc": 2, "test_loss": 4, "test_acc": 2}
NOTES = [
    "- Cells are the mean ± sample standard deviation (ddof = 1) over a configuration's seeds; a plain number "
    "is a single seed. `seeds` counts the runs averaged. Rows are sorted by test_acc, best first.",
    "- best test_acc (epoch): the maximum of the seed-averaged test-accuracy curve and the epoch where it "
    "occurs; chosen on the test set, so optimistic.",
    "- s/epoch: mean wall-clock seconds per epoch (training and test evaluation) over all epochs and seeds.",
    "- Findings: the leader and the runner-up are compared by a Welch two-sample t-test on their per-seed "
    "test accuracies at the table's epoch; the lead counts as larger than the seed-to-seed spread when p < 0.05.",
    "- Data: [table.csv](table.csv) (separate mean and std columns), [table.md](table.md).",
]


def mean_std(mean: float, std: float = float("nan"), digits: int = 2) -> str:
    """``98.91 ± 0.05``; the plain mean when ``std`` is NaN (one seed); ``—`` when nothing was logged."""
    if mean != mean:
        return "—"
    return f"{mean:.{digits}f}" if std != std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table, group_by: Sequence[str], show_failed: bool) -> str:
    """The report table (one row per configuration, as ``report.aggregate`` makes it) as GitHub markdown."""
    from pandas import isna

    show_epoch = bool(table["epochs_differ"].any() or table["epoch"].nunique() > 1)
    header = [*group_by, "n_params", "seeds", *(["failed"] if show_failed else []), *(["epoch"] if show_epoch else []),
              *DIGITS, "best test_acc (epoch)", "s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        n = r["n_params"]
        cells = [str(r[k]).replace("|", "\\|") for k in group_by]
        cells += [f"{n:,}" if isinstance(n, int) else str(n), str(r["seeds"])]
        cells += [str(r["failed"])] if show_failed else []
        cells += ["—" if isna(r["epoch"]) else f"{r['epoch']}{'*' if r['epochs_differ'] else ''}"] if show_epoch else []
        cells += [mean_std(r[f"{k}_mean"], r[f"{k}_std"], d) for k, d in DIGITS.items()]
        best = r["best_epoch"]
        cells += ["—" if isna(best) else f"{r['best_test_acc']:.2f} ({best})", mean_std(r["epoch_seconds_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(table, at: str) -> str:
    """Which configuration leads on test accuracy and whether its lead beats the seed-to-seed spread.

    The rule: with two or more seeds on both sides, a Welch two-sample t-test on the per-seed
    test accuracies at the table's epoch; the lead counts as larger than the spread when
    p < 0.05 (without SciPy: when t > 2). With a single seed on either side no spread can be judged.
    """
    from lenet_sweep.report import welch_test

    rows = table.dropna(subset=["test_acc_mean"])
    if rows.empty:
        return "No selected run logged a test accuracy."
    a = rows.iloc[0]
    acc = {r["label"]: mean_std(r["test_acc_mean"], r["test_acc_std"]) for _, r in rows.iterrows()}
    if len(rows) == 1:
        return f"Only one configuration (**{a['label']}**, test accuracy {acc[a['label']]} % at {at}); nothing to compare."
    b = rows.iloc[1]
    diff = a["test_acc_mean"] - b["test_acc_mean"]
    text = (f"**{a['label']}** has the highest test accuracy at {at}: {acc[a['label']]} %, {diff:.2f} points ahead of "
            f"the runner-up **{b['label']}** ({acc[b['label']]} %).")
    (na, sa), (nb, sb) = (a["test_acc_n"], a["test_acc_std"]), (b["test_acc_n"], b["test_acc_std"])
    if min(na, nb) < 2:
        single = [r["label"] for r in (a, b) if r["test_acc_n"] < 2]
        text += (f" {' and '.join(single)} {'has' if len(single) == 1 else 'have'} only one seed, so no seed-to-seed "
                 "spread can be judged: the ranking rests on single runs and may not hold for other seeds.")
    else:
        detail = f"seed-to-seed std {sa:.2f} and {sb:.2f} points over {na} and {nb} seeds"
        if sa == 0 and sb == 0:
            clear = diff > 0
        else:
            t, df, p = welch_test(diff, sa, na, sb, nb)
            clear = p < 0.05 if p is not None else t > 2
            detail += f"; Welch t = {t:.2f}, df ≈ {df:.1f}" + (f", two-sided p = {p:.3f}" if p is not None else "")
        if clear:
            text += f" The lead is larger than the seed-to-seed spread ({detail})."
        else:
            smaller = " it is smaller than one seed-to-seed standard deviation, and" if diff < max(sa, sb) else ""
            text += (f" The lead is **not** larger than the seed-to-seed spread ({detail}):{smaller} with these seeds "
                     "the two configurations cannot be told apart.")
    top = rows.loc[rows["best_test_acc"].idxmax()]
    if top["label"] != a["label"]:
        text += (f" Taking each configuration's best epoch instead (chosen on the test set, so optimistic), "
                 f"**{top['label']}** leads with {top['best_test_acc']:.2f} % at epoch {top['best_epoch']}.")
    return text


def parameter_tables(frame) -> str:
    """Markdown per-layer parameter tables of every distinct model among the runs.

    ``frame`` holds one row per run with its params as columns; each model is rebuilt with
    ``models.build_model`` from ``model.arch`` and ``model.regularization.*``.
    """
    from lenet_sweep.models import build_model, count_parameters, parameter_table

    keys = ["model.arch", "model.regularization.dropout", "model.regularization.batchnorm"]
    if any(k not in frame for k in keys):
        return "(the runs do not record model.arch and model.regularization.*)"
    blocks = []
    for (arch, dropout, batchnorm), members in frame.groupby(keys):
        try:
            model = build_model(arch, float(dropout), batchnorm == "True")
        except ValueError as error:
            blocks.append(f"{arch}: {error}")
            continue
        names = ", ".join(sorted(members["model.name"].unique())) if "model.name" in members else arch
        desc = arch + (f", dropout {dropout}" if float(dropout) > 0 else "") + (", batch norm" if batchnorm == "True" else "")
        lines = [f"**{names}** ({desc})", "", "| layer | parameters |", "|---|---:|"]
        lines += [f"| {name} | {n:,} |" for name, n in parameter_table(model)]
        total = count_parameters(model)
        lines.append(f"| **total** | **{total:,}** |")
        logged = {int(float(v)) for v in members["n_params"].dropna()} if "n_params" in members else set()
        if logged and logged != {total}:
            lines.append(f"\nThe runs logged n_params = {', '.join(map(str, sorted(logged)))}: the code changed since.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


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
    names, written = figure_names([label for label, _ in rows]), {}
    for label, seeds in rows:
        curve = curves[label]
        if any(curve[key].notna().any() for key in DIGITS):
            spread = f"{seeds} seeds, mean ± 1 std" if seeds > 1 else "1 seed"
            save_figure(plot_curves(curve, f"{label} ({spread})"), out_dir / names[label])
            written[label] = names[label]
    overview = plot_overview({label: curves[label] for label in written}, title="test accuracy, every configuration")
    save_figure(overview, out_dir / "overview_test_acc.png")
    return written


def write_tables_and_page(out_dir: Path, table, table_md: str, summary: str, findings: str,
                          figures: Mapping[str, str], frame) -> list[Path]:
    """``table.csv`` (mean and std columns), ``table.md`` and ``report.md``; returns their paths.

    ``report.md``: the summary line, the table and its notes, the findings, the figures, the parameters.
    """
    csv = table.drop(columns=["epochs_differ", "test_acc_n"]).assign(figure=table["label"].map(figures))
    csv.to_csv(out_dir / "table.csv", index=False)
    (out_dir / "table.md").write_text(table_md + "\n")
    page = ["# lenet_sweep report", "", summary, "", "## Results", "", table_md, "", *NOTES, "",
            "## Findings", "", findings, "",
            "## Learning curves", "", "![test accuracy of every configuration](overview_test_acc.png)", ""]
    for label, name in figures.items():
        page += [f"### {label}", "", f"![{label}: loss and accuracy against epoch]({name})", ""]
    page += ["## Parameters per layer", "", parameter_tables(frame), ""]
    (out_dir / "report.md").write_text("\n".join(page))
    return [out_dir / name for name in ("table.csv", "table.md", "report.md")]
