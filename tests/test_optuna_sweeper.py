"""``hydra/sweeper=optuna`` through the CLI: real Optuna storage (SQLite), real MLflow stores, small MNIST subsets."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers.cli import SMALL_SEARCH, run_cli, runs_of, start_cli, store_locked, wait_for_runs

pytestmark = pytest.mark.slow


def study_of(workdir) -> optuna.Study:
    storage = f"sqlite:///{workdir / 'outputs' / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def trials_and_runs(workdir):
    """The study's trials and the sweep's child runs, keyed by trial number; the parent run."""
    study = study_of(workdir)
    client, every_run = runs_of(workdir, children_only=False)
    (parent,) = [r for r in every_run if r.data.tags.get("sweep") == "true"]
    children = [r for r in every_run if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    runs = {int(r.data.tags["trial_number"]): r for r in children}
    assert len(runs) == len(children), "a trial number tags two runs"
    return study, runs, parent, client


def test_study_and_runs_agree_under_joblib(workdir):
    lr = "optimizer.lr=tag(log,interval(1e-3,0.3))"
    args = [
        *SMALL_SEARCH,
        lr,
        "train.epochs=2",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.seed=0",
    ]
    result = run_cli([*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    study, runs, parent, client = trials_and_runs(workdir)
    assert parent.info.run_name == f"study {study.study_name}" and parent.info.status == "FINISHED"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6 and sorted(runs) == list(range(6))
    for trial in study.trials:
        run = runs[trial.number]
        val_acc = [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert len(val_acc) == 2 and trial.value == max(val_acc)  # objective=best
        assert float(run.data.params["optimizer.lr"]) == trial.params["optimizer.lr"]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["trial_state"] == "COMPLETE" and run.data.tags["study"] == study.study_name
    best_run = runs[study.best_trial.number]
    assert study.best_value == max(m.value for m in client.get_metric_history(best_run.info.run_id, "val_acc"))


def test_a_hopeless_learning_rate_is_pruned_and_the_study_continues(workdir):
    # Random sampler, seed 11: trial 0 draws lr 0.1, trial 1 lr 1e-5 (Optuna 5's RandomSampler).
    pruning = [
        "optimizer.lr=choice(0.1,0.00001)",
        "train.epochs=3",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=11",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruner_startup_trials=1",
    ]
    result = run_cli([*SMALL_SEARCH, *pruning, "hydra.sweeper.n_trials=2"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 jobs: 1 finished, 0 failed, 0 killed, 0 skipped, 1 pruned" in result.stdout
    study, runs, _, client = trials_and_runs(workdir)
    assert [(t.params["optimizer.lr"], t.state) for t in study.trials] == [
        (0.1, TrialState.COMPLETE),
        (0.00001, TrialState.PRUNED),
    ]
    pruned = runs[1]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["trial_state"] == "PRUNED"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_acc")] == [1]  # stopped after epoch 1
    status = run_cli([], workdir, module="lenet_sweep.status")
    assert status.returncode == 0 and "1 of 2 jobs FINISHED, 1 PRUNED" in status.stdout, status.stdout + status.stderr

    plan = run_cli([*SMALL_SEARCH, *pruning, "hydra.sweeper.n_trials=4", "sweep.plan=true"], workdir)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "so far 1 complete, 1 pruned, 0 fail, 0 running, 0 waiting" in plan.stdout and "2 remain" in plan.stdout
    assert len(study_of(workdir).trials) == 2 and len(runs_of(workdir)[1]) == 2  # the plan created nothing

    relaunch = run_cli([*SMALL_SEARCH, *pruning, "hydra.sweeper.n_trials=3"], workdir)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    study, runs, parent, _ = trials_and_runs(workdir)
    assert len(study.trials) == 3 and sorted(runs) == [0, 1, 2]  # the study's total, not three more
    assert parent.data.tags["launches"] == "2"


def test_a_killed_launch_retries_its_trial_continuing_the_run(workdir):
    args = [
        *SMALL_SEARCH,
        "model=lenet",
        "optimizer.lr=interval(0.01,0.1)",
        "train.epochs=2",
        "hydra.sweeper.n_trials=2",
    ]
    process = start_cli(args, workdir)
    try:
        (killed_run,) = wait_for_runs(workdir, process, lambda client, runs: any(r.data.metrics for r in runs))
    finally:
        with store_locked(workdir):  # the job can neither log its last epoch nor end its run before the kill
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert [t.state for t in study_of(workdir).trials] == [TrialState.RUNNING]

    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    study, runs, _, client = trials_and_runs(workdir)
    died, retry, new = study.trials
    assert (died.state, retry.state, new.state) == (TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE)
    assert retry.user_attrs["retry_of"] == 0 and retry.params == died.params
    assert sorted(runs) == [1, 2]  # two trials counted, as n_trials says; each number tags one run
    resumed = runs[1]
    assert resumed.info.run_id == killed_run.info.run_id  # the killed trial's run continued, not duplicated
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "val_acc")) == [1, 2]
    assert retry.value == max(m.value for m in client.get_metric_history(resumed.info.run_id, "val_acc"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lrr=interval(0.01,0.1)", "optimizer.lrr"),
        ("optimizer.lr=interval(1,0)", "optimizer.lr=interval(1,0): the lower bound must be below"),
        ("hydra.sweeper.metric=test_acc", "hydra.sweeper.metric=test_acc: the search optimises validation metrics"),
        ("hydra.sweeper.storage=sqlite:////proc/no-such-dir/optuna.db", "Optuna storage sqlite:////proc/no-such-dir"),
    ],
)
def test_bad_input_is_one_line_and_creates_nothing(workdir, override, message):
    args = [*SMALL_SEARCH, "optimizer.lr=interval(0.01,0.1)", override]
    result = run_cli(args, workdir)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (workdir / "outputs" / "mlflow.db").exists() and not (workdir / "outputs" / "optuna.db").exists()
