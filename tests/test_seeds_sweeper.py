"""``hydra/sweeper=seeds`` through the CLI: seeds only where the answer is open, reuse on relaunch, bad input."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest

from tests.helpers.cli import run_cli, runs_of, start_cli, wait_for_runs

pytestmark = pytest.mark.slow

# The MLP learns in one epoch of 600 images at lr 0.05 (about 56 % test accuracy) and not at all at 1e-4 (about 9 %).
FAST = ["model=mlp", "train.epochs=1", "train.batch_size=16", "data.train_limit=600", "data.test_limit=200"]
SEEDS = ["hydra/sweeper=seeds", "hydra.sweeper.min_seeds=3", "hydra.sweeper.max_seeds=6"]
VERY_DIFFERENT = ["-m", *SEEDS, "optimizer.lr=0.05,1e-4", *FAST]


def _verdict_lines(stdout: str) -> list[str]:
    """The verdicts the sweep printed: the indented lines under its ``Verdicts (...)`` line."""
    lines = stdout[stdout.index("Verdicts (") :].splitlines()[1:]
    verdicts = []
    for line in lines:
        if not line.startswith("  "):
            break
        verdicts.append(line.strip())
    return verdicts


def test_very_different_configs_resolve_better_after_min_seeds_and_the_plan_then_reads_their_spread(workdir):
    result = run_cli(VERY_DIFFERENT, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every comparison resolved" in result.stdout
    (verdict,) = _verdict_lines(result.stdout)
    assert verdict.startswith("optimizer.lr=0.05 is better than optimizer.lr=0.0001") and "seeds 3 and 3" in verdict
    _, runs = runs_of(workdir)
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}  # no seed beyond min_seeds

    plan = run_cli([*VERY_DIFFERENT, "sweep.plan=true"], workdir)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert re.search(r"optimizer\.lr=0\.05\s+3 FINISHED seeds in the store", plan.stdout)
    assert "about 3.0 seeds each" in plan.stdout and "6 of them already FINISHED" in plan.stdout
    _, after = runs_of(workdir, children_only=False)
    assert len(after) == 7  # the six jobs and the sweep's parent: the plan made nothing


def test_identical_configs_never_end_better_and_stop_at_max_seeds(workdir):
    # weight_decay 0 and 0.0 name one configuration twice: the second's jobs reuse the first's runs.
    seeds = ["hydra/sweeper=seeds", "hydra.sweeper.min_seeds=2", "hydra.sweeper.max_seeds=3"]  # looks at 2 and 3
    args = ["-m", *seeds, "optimizer.weight_decay=0,0.0", *FAST]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (verdict,) = _verdict_lines(result.stdout)
    assert " is better than " not in verdict
    assert "unresolved within budget" in verdict or "equivalent within" in verdict
    _, runs = runs_of(workdir)
    assert "max_seeds=3 reached with comparisons still open" in result.stdout or "equivalent within" in verdict
    assert len(runs) <= 3 and max(Counter(r.data.params["seed"] for r in runs).values()) == 1


def test_killed_mid_round_then_relaunched_reuses_every_finished_seed(workdir):
    process = start_cli(VERY_DIFFERENT, workdir)
    try:
        done = wait_for_runs(workdir, process, lambda c, runs: sum(r.info.status == "FINISHED" for r in runs) >= 2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finished_before = {r.info.run_id for r in done if r.info.status == "FINISHED"}
    result = run_cli(VERY_DIFFERENT, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (verdict,) = _verdict_lines(result.stdout)
    assert verdict.startswith("optimizer.lr=0.05 is better than optimizer.lr=0.0001") and "seeds 3 and 3" in verdict
    _, runs = runs_of(workdir)
    assert finished_before <= {r.info.run_id for r in runs if r.info.status == "FINISHED"}
    assert Counter(r.data.tags["config_fingerprint"] for r in runs).most_common(1)[0][1] == 1  # nothing run twice
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    skipped = int(re.search(r"Sweep summary: \d+ jobs: .* (\d+) skipped", result.stdout).group(1))
    assert skipped >= len(finished_before)


@pytest.mark.parametrize(
    ("setting", "named"),
    [  # every bad setting is named by tests/test_seeds_grid.py; here, that the CLI stops before any run
        ("hydra.sweeper.min_seeds=1", "hydra.sweeper.min_seeds=1: must be at least 2"),
        ("hydra.sweeper.metric=val_acc", "hydra.sweeper.metric=val_acc: unknown metric"),
    ],
)
def test_bad_settings_stop_before_any_run_with_one_line(workdir, setting, named):
    result = run_cli(["-m", "hydra/sweeper=seeds", "optimizer.lr=0.05,1e-4", *FAST, setting], workdir)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {named}")
    assert not (workdir / "outputs" / "mlflow.db").exists()  # no run, not even the sweep's parent
