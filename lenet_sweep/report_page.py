"""The report's words: the markdown table, the findings (Welch's test), the parameter tables and the page.

``report`` gathers and aggregates the runs into a table (one row per configuration)
and hands it here; ``figures`` draws the curves the page links to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from scipy.stats import ttest_ind_from_stats

DATASET_KEY = "data.name"  # runs on several data sets are grouped, judged and ranked per data set


def config_label(row: pd.Series, keys: Sequence[str]) -> str:
    """A configuration's name in tables and findings: ``*.name`` values as they are, other keys as key=value."""
    parts = [str(row[k]) if k.endswith(".name") else f"{k.split('.')[-1]}={row[k]}" for k in keys]
    return " · ".join(parts) or "all runs"


DIGITS = {"train_loss": 4, "train_acc": 2, "test_loss": 4, "test_acc": 2}
NOTES = [
    "- Cells are the mean ± sample standard deviation (ddof = 1) over a configuration's seeds; a plain number "
    "is a single seed. `seeds` counts the runs averaged. Rows are sorted by test_acc, best first (within "
    "each data set when the runs span several).",
    "- best test_acc (epoch): the maximum of the seed-averaged test-accuracy curve and the epoch where it "
    "occurs; chosen on the test set, so optimistic.",
    "- s/epoch: mean wall-clock seconds per epoch (training and test evaluation) over all epochs and seeds.",
    "- Findings: the leader and the runner-up are compared by a Welch two-sample t-test on their per-seed "
    "test accuracies at the table's epoch (per data set); the lead counts as larger than the seed-to-seed "
    "spread when p < 0.05.",
    "- Data: [table.csv](table.csv) (separate mean and std columns), [table.md](table.md).",
]


def mean_std(mean: float, std: float = float("nan"), digits: int = 2) -> str:
    """``98.91 ± 0.05``; the plain mean when ``std`` is NaN (one seed); ``—`` when nothing was logged."""
    if mean != mean:
        return "—"
    return f"{mean:.{digits}f}" if std != std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table, group_by: Sequence[str], show_failed: bool) -> str:
    """The report table (one row per configuration, as ``aggregate`` makes it) as GitHub markdown."""
    show_epoch = bool(table["epochs_differ"].any() or table["epoch"].nunique() > 1)
    header = [
        *group_by,
        "n_params",
        "seeds",
        *(["failed"] if show_failed else []),
        *(["epoch"] if show_epoch else []),
        *DIGITS,
        "best test_acc (epoch)",
        "s/epoch",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        n = r["n_params"]
        cells = [str(r[k]).replace("|", "\\|") for k in group_by]
        cells += [f"{n:,}" if isinstance(n, int) else str(n), str(r["seeds"])]
        cells += [str(r["failed"])] if show_failed else []
        if show_epoch:
            cells.append("—" if pd.isna(r["epoch"]) else f"{r['epoch']}{'*' if r['epochs_differ'] else ''}")
        cells += [mean_std(r[f"{k}_mean"], r[f"{k}_std"], d) for k, d in DIGITS.items()]
        best = r["best_epoch"]
        cells += ["—" if pd.isna(best) else f"{r['best_test_acc']:.2f} ({best})", mean_std(r["epoch_seconds_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(table, at: str) -> str:
    """Which configuration leads on test accuracy and whether its lead beats the seed-to-seed spread.

    The rule: with two or more seeds on both sides, a Welch two-sample t-test on the per-seed
    test accuracies at the table's epoch; the lead counts as larger than the spread when
    p < 0.05. With a single seed on either side no spread can be judged.
    """
    rows = table.dropna(subset=["test_acc_mean"])
    if rows.empty:
        return "No selected run logged a test accuracy."
    a = rows.iloc[0]
    acc = {r["label"]: mean_std(r["test_acc_mean"], r["test_acc_std"]) for _, r in rows.iterrows()}
    if len(rows) == 1:
        return (
            f"Only one configuration (**{a['label']}**, test accuracy {acc[a['label']]} % at {at}); nothing to compare."
        )
    b = rows.iloc[1]
    diff = a["test_acc_mean"] - b["test_acc_mean"]
    text = (
        f"**{a['label']}** has the highest test accuracy at {at}: {acc[a['label']]} %, {diff:.2f} points ahead of "
        f"the runner-up **{b['label']}** ({acc[b['label']]} %)."
    )
    (na, sa), (nb, sb) = (a["test_acc_n"], a["test_acc_std"]), (b["test_acc_n"], b["test_acc_std"])
    if min(na, nb) < 2:
        single = [r["label"] for r in (a, b) if r["test_acc_n"] < 2]
        text += (
            f" {' and '.join(single)} {'has' if len(single) == 1 else 'have'} only one seed, so no seed-to-seed "
            "spread can be judged: the ranking rests on single runs and may not hold for other seeds."
        )
    else:
        detail = f"seed-to-seed std {sa:.2f} and {sb:.2f} points over {na} and {nb} seeds"
        if sa == 0 and sb == 0:
            clear = diff > 0
        else:
            t, p = ttest_ind_from_stats(a["test_acc_mean"], sa, na, b["test_acc_mean"], sb, nb, equal_var=False)
            clear = p < 0.05
            detail += f"; Welch t = {t:.2f}, two-sided p = {p:.3f}"
        if clear:
            text += f" The lead is larger than the seed-to-seed spread ({detail})."
        else:
            smaller = " it is smaller than one seed-to-seed standard deviation, and" if diff < max(sa, sb) else ""
            text += (
                f" The lead is **not** larger than the seed-to-seed spread ({detail}):{smaller} with these seeds "
                "the two configurations cannot be told apart."
            )
    top = rows.loc[rows["best_test_acc"].idxmax()]
    if top["label"] != a["label"]:
        text += (
            f" Taking each configuration's best epoch instead (chosen on the test set, so optimistic), "
            f"**{top['label']}** leads with {top['best_test_acc']:.2f} % at epoch {top['best_epoch']}."
        )
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
        desc = arch + (f", dropout {dropout}" if float(dropout) > 0 else "")
        desc += ", batch norm" if batchnorm == "True" else ""
        lines = [f"**{names}** ({desc})", "", "| layer | parameters |", "|---|---:|"]
        lines += [f"| {name} | {n:,} |" for name, n in parameter_table(model)]
        total = count_parameters(model)
        lines.append(f"| **total** | **{total:,}** |")
        logged = {int(float(v)) for v in members["n_params"].dropna()} if "n_params" in members else set()
        if logged and logged != {total}:
            lines.append(f"\nThe runs logged n_params = {', '.join(map(str, sorted(logged)))}: the code changed since.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_tables_and_page(
    out_dir: Path,
    table,
    table_md: str,
    summary: str,
    findings_text: str,
    figure_files: Mapping[str, str],
    frame,
    search_md: str = "",
) -> list[Path]:
    """``table.csv`` (mean and std columns), ``table.md`` and ``report.md``; returns their paths.

    ``report.md``: the summary line, the table and its notes, the findings, the search section
    (``report_search``; none when empty), the figures, the parameters.
    """
    csv = table.drop(columns=["epochs_differ", "test_acc_n"]).assign(figure=table["label"].map(figure_files))
    csv.to_csv(out_dir / "table.csv", index=False)
    (out_dir / "table.md").write_text(table_md + "\n")
    page = [
        "# lenet_sweep report",
        "",
        summary,
        "",
        "## Results",
        "",
        table_md,
        "",
        *NOTES,
        "",
        "## Findings",
        "",
        findings_text,
        "",
        *([search_md, ""] if search_md else []),
        "## Learning curves",
        "",
        "![test accuracy of every configuration](overview_test_acc.png)",
        "",
    ]
    for label, name in figure_files.items():
        page += [f"### {label}", "", f"![{label}: loss and accuracy against epoch]({name})", ""]
    page += ["## Parameters per layer", "", parameter_tables(frame), ""]
    (out_dir / "report.md").write_text("\n".join(page))
    return [out_dir / name for name in ("table.csv", "table.md", "report.md")]


# --- several data sets ------------------------------------------------------------------


def config_labels(table: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """Each row's configuration label without the data set (findings and verdicts are per data set)."""
    others = [k for k in keys if k != DATASET_KEY]
    return pd.Series([config_label(row, others) for _, row in table.iterrows()], index=table.index)


def findings_by_dataset(table: pd.DataFrame, keys: Sequence[str], at: str) -> str:
    """``findings``, one paragraph per data set when the rows span several, and a line comparing their rankings."""
    if DATASET_KEY not in keys or table[DATASET_KEY].nunique() < 2:
        return findings(table, at)
    table = table.assign(label=config_labels(table, keys))
    by_dataset = table.groupby(DATASET_KEY, sort=False)
    paragraphs = [f"**On {dataset}:** " + findings(rows, at) for dataset, rows in by_dataset]
    rankings = {dataset: list(rows.dropna(subset=["test_acc_mean"])["label"]) for dataset, rows in by_dataset}
    comparison = ranking_comparison(rankings)
    return "\n\n".join(paragraphs + ([comparison] if comparison else []))


def ranking_comparison(rankings: Mapping[str, Sequence[str]]) -> str | None:
    """One line saying whether the configurations that ran on every data set rank the same on each.

    ``rankings``: each data set's configuration labels, best mean test accuracy first.
    None when fewer than two configurations ran on every data set.
    """
    common = set.intersection(*(set(labels) for labels in rankings.values()))
    orders = {dataset: [label for label in labels if label in common] for dataset, labels in rankings.items()}
    if len(common) < 2:
        return None
    shown = "; ".join(f"{dataset}: {' > '.join(order)}" for dataset, order in orders.items())
    names = " and ".join(orders)
    if len({tuple(order) for order in orders.values()}) == 1:
        return f"The {len(common)} configurations run on {names} rank the same by mean test accuracy on each: {shown}."
    return f"The {len(common)} configurations run on {names} rank differently by mean test accuracy: {shown}."
