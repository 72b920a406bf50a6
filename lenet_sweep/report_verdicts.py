"""The report's verdicts: any set of runs judged as the seeds sweeper judges them (``lenet_sweep.verdicts``).

For each data set, the configuration with the best mean test accuracy against each other one:
better, equivalent within ``±margin``, or unresolved (with the seeds that would resolve it),
with P(A > B) and its bootstrap interval. The runs are read as one fixed sample: each pair
is one look at the first ``n`` seeds of both sides (``n`` the smaller count), at level
``alpha`` shared by every pair of the data set. An adaptive sweep's own verdicts, printed at
its end and logged as its parent run's ``verdicts.txt``, also account for its earlier looks.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lenet_sweep.report_page import DATASET_KEY, config_labels
from lenet_sweep.verdicts import Design, compare

DEFAULT_MARGIN = 0.1  # test accuracy points: the seeds sweeper's default
DEFAULT_ALPHA = 0.05


def seed_values(frame: pd.DataFrame, hist: pd.DataFrame, labels: pd.Series, epoch: int | None) -> dict[str, list]:
    """Each label's per-run test accuracy at ``epoch`` (``None``: each run's last), in seed order."""
    chosen = hist.dropna(subset=["test_acc"])
    if epoch is not None:
        chosen = chosen[chosen["epoch"] == epoch]
    last = chosen.sort_values("epoch").groupby("run_id")["test_acc"].last()
    seeds = pd.to_numeric(frame.get("seed", pd.Series(0, index=frame.index)), errors="coerce")
    values: dict[str, list] = {}
    for run_id in seeds.sort_values(kind="stable").index:
        if run_id in last.index:
            values.setdefault(labels[run_id], []).append(float(last[run_id]))
    return values


def judge_runs(values: dict[str, list], margin: float, alpha: float) -> list[str]:
    """One sentence per comparison of the leader with each other configuration that has two or more seeds."""
    ready = {label: v for label, v in values.items() if len(v) >= 2}
    if len(ready) < 2:
        return []
    leader = max(ready, key=lambda label: sum(ready[label]) / len(ready[label]))
    pairs = len(ready) * (len(ready) - 1) // 2
    sentences = []
    for other in (label for label in ready if label != leader):
        n = min(len(ready[leader]), len(ready[other]))
        design = Design(n, n, 1, alpha, margin, pairs)
        sentences.append(compare(leader, ready[leader], other, ready[other], design).sentence())
    return sentences


def verdict_section(
    frame: pd.DataFrame,
    hist: pd.DataFrame,
    keys: Sequence[str],
    epoch: int | None,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
) -> str:
    """The verdicts as markdown, per data set when the runs span several; '' when nothing can be judged.

    Each run's configuration is named as the report's table names it (``report_page.config_labels``).
    """
    labels = config_labels(frame, keys)
    datasets = frame[DATASET_KEY] if DATASET_KEY in keys else pd.Series("", index=frame.index)
    blocks = []
    for dataset in datasets.unique():
        members = datasets.index[datasets == dataset]
        sentences = judge_runs(seed_values(frame.loc[members], hist, labels[members], epoch), margin, alpha)
        if sentences:
            head = f"On {dataset}: " if dataset else ""
            blocks.append("\n".join(f"- {head}{s}" for s in sentences))
    if not blocks:
        return ""
    intro = (
        f"Verdicts (test_acc; each pair one look at the seeds both sides have, alpha {alpha:g} shared by every "
        f"pair, margin ±{margin:g} points; docs/statistics.md):"
    )
    return "\n\n".join([intro, *blocks])
