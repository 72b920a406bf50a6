"""The report's verdicts on any set of runs: the leader against each other configuration, seeds in seed order."""

from __future__ import annotations

import pandas as pd

from lenet_sweep.report_page import config_label
from lenet_sweep.report_verdicts import judge_runs, seed_values, verdict_section


def _runs():
    frame = pd.DataFrame(
        {"model.name": ["lenet", "lenet", "lenet", "mlp", "mlp", "mlp"], "seed": ["2", "0", "1", "0", "1", "2"]},
        index=[f"r{i}" for i in range(6)],
    )
    accuracy = {"r0": 99.2, "r1": 99.0, "r2": 99.1, "r3": 97.7, "r4": 97.8, "r5": 97.6}
    hist = pd.DataFrame(
        [(run, epoch, acc - (2 - epoch)) for run, acc in accuracy.items() for epoch in (1, 2)],
        columns=["run_id", "epoch", "test_acc"],
    )
    return frame, hist


def test_values_are_taken_at_the_last_epoch_in_seed_order():
    frame, hist = _runs()
    labels = pd.Series([config_label(row, ["model.name"]) for _, row in frame.iterrows()], index=frame.index)
    assert seed_values(frame, hist, labels, None) == {"lenet": [99.0, 99.1, 99.2], "mlp": [97.7, 97.8, 97.6]}
    assert seed_values(frame, hist, labels, 1)["lenet"] == [98.0, 98.1, 98.2]


def test_the_section_judges_the_leader_against_the_others():
    frame, hist = _runs()
    text = verdict_section(frame, hist, ["model.name"], None)
    assert "- lenet is better than mlp: difference +1.400" in text and "seeds 3 and 3" in text


def test_single_seeds_are_not_judged():
    assert judge_runs({"a": [99.0], "b": [98.0]}, 0.1, 0.05) == []
    (sentence,) = judge_runs({"a": [99.0, 99.1], "b": [99.05, 98.95], "c": [10.0]}, 0.1, 0.05)
    assert sentence.startswith("a vs b: unresolved within budget")
