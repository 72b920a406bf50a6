"""Pure decisions on hand-built runs: what a job does with earlier runs (``plan.decide``); the sweep's summary."""

from __future__ import annotations

import pytest

from lenet_sweep import store
from lenet_sweep.plan import count_line, decide
from lenet_sweep.provenance import DATA_DIGEST_TAG, DIRTY_TAG, CodeVersion, Provenance
from lenet_sweep.store import MLFLOW_GIT_COMMIT, Store
from lenet_sweep.sweep import format_summary

FINGERPRINT = "f" * 16
CLEAN = CodeVersion("a" * 40)
NOW = Provenance(CLEAN, data_digest="data-1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Store(f"sqlite:///{tmp_path_factory.mktemp('plan') / 'mlflow.db'}")


@pytest.fixture
def experiment(runs, request):
    return runs.get_or_create_experiment(request.node.name[:60], None)


def make_run(runs, experiment, status, commit=CLEAN.commit, data="data-1", dirty="", checkpoint=None, epochs=0):
    tags = {store.FINGERPRINT_TAG: FINGERPRINT, MLFLOW_GIT_COMMIT: commit, DATA_DIGEST_TAG: data, DIRTY_TAG: dirty}
    if checkpoint is not None:
        tags[store.CHECKPOINT_TAG] = str(checkpoint)
    run_id = runs.create_run(experiment, "job", tags)
    for epoch in range(1, epochs + 1):
        runs.log_metrics(run_id, epoch, {"test_acc": 90.0})
    if status != "RUNNING":
        runs.end_run(run_id, status)
    return run_id


def test_a_finished_run_of_the_same_config_data_and_clean_code_is_skipped(runs, experiment):
    finished = make_run(runs, experiment, "FINISHED")
    decision = decide(runs, experiment, FINGERPRINT, "config", True, NOW)
    assert (decision.action, decision.run.info.run_id) == ("skip", finished)
    assert decision.reason == "same config, same data, same code"


def test_other_code_is_skipped_under_config_but_rerun_under_code(runs, experiment):
    make_run(runs, experiment, "FINISHED", commit="b" * 40)
    assert decide(runs, experiment, FINGERPRINT, "config", True, NOW).action == "skip"
    under_code = decide(runs, experiment, FINGERPRINT, "code", True, NOW)
    assert under_code.action == "new"
    assert decide(runs, experiment, FINGERPRINT, "never", True, NOW).action == "new"


def test_other_data_is_never_reused(runs, experiment):
    make_run(runs, experiment, "FINISHED", data="data-2")
    assert decide(runs, experiment, FINGERPRINT, "config", True, NOW).action == "new"


def test_a_killed_run_with_a_checkpoint_resumes_and_one_without_an_epoch_is_taken_over(runs, experiment, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"x")
    empty = make_run(runs, experiment, "KILLED")
    assert decide(runs, experiment, FINGERPRINT, "config", True, NOW).action == "take over"
    resumable = make_run(runs, experiment, "FAILED", checkpoint=checkpoint, epochs=2)
    decision = decide(runs, experiment, FINGERPRINT, "config", True, NOW)
    assert (decision.action, decision.run.info.run_id, decision.checkpoint) == ("resume", resumable, checkpoint)
    assert decide(runs, experiment, FINGERPRINT, "config", False, NOW).action == "new"
    assert empty != resumable


def test_a_running_run_is_continued_only_when_it_is_known_orphaned(runs, experiment):
    running = make_run(runs, experiment, "RUNNING")
    assert decide(runs, experiment, FINGERPRINT, "config", True, NOW).action == "new"
    decision = decide(runs, experiment, FINGERPRINT, "config", True, NOW, orphaned=frozenset({running}))
    assert (decision.action, decision.reason) == (
        "take over",
        "left RUNNING by a process that is gone before its first epoch",
    )
    runs.end_run(running, "KILLED")


def test_the_summary_counts_every_status_and_says_when_nothing_ran():
    results = [
        {"status": "FINISHED", "run_name": "lenet·s0"},
        {"status": "FAILED", "run_name": "lenet·s1", "reason": "DivergedError: loss nan"},
        {"status": "SKIPPED", "run_name": "mlp·s0"},
    ]
    summary = format_summary(results).splitlines()
    assert summary[0].startswith("Sweep summary: 3 jobs: 1 finished, 1 failed, 0 killed, 1 skipped")
    assert "  FAILED   lenet·s1 (DivergedError: loss nan)" in summary
    skipped = format_summary([{"status": "SKIPPED", "run_name": "mlp·s0"}])
    assert skipped.endswith("(sweep.skip_finished=false re-runs them).")


def test_the_plan_counts_its_actions_in_order():
    from lenet_sweep.plan import Decision

    decisions = [Decision("new"), Decision("skip"), Decision("resume"), Decision("new")]
    assert count_line(decisions) == "4 jobs: 1 skip, 2 new, 1 resume"
