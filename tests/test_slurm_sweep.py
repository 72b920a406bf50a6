"""The cluster path for real: submitit_slurm on a one-node SLURM cluster, logging to an MLflow server."""

import subprocess
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.helpers.cli import run_cli, start_cli
from tests.helpers.runs import METRICS, assert_one_parent_with_children, steps
from tests.helpers.services import paused

pytestmark = pytest.mark.slow  # SLURM, CLI sweeps and an MLflow server

SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=local", "hydra.launcher.cpus_per_task=1"]


def server_runs(uri, experiment_name="lenet_sweep", children_only=True):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    return client, [r for r in runs if not (children_only and r.data.tags.get("sweep") == "true")]


def start_sweep(args, workdir, slurm_env) -> subprocess.Popen:
    return start_cli(args, workdir, SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"])


def interrupted_sweep(mlflow_server: str, experiment: str, *overrides: str) -> list[str]:
    """A SLURM sweep of 4-epoch jobs, logging to ``mlflow_server``; the test signals one while the server is paused."""
    return [
        "-m",
        *SLURM,
        *overrides,
        "train.epochs=4",
        "data.train_limit=600",
        "data.test_limit=200",
        f"mlflow.tracking_uri={mlflow_server}",
        f"mlflow.experiment={experiment}",
    ]


def wait_for_job_log(workdir, text: str, timeout_s: float = 120) -> None:
    """Poll the sweep's SLURM job logs (submitit's ``*_log.out``/``.err``) until one holds ``text``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in log.read_text(errors="replace") for log in (workdir / "outputs").rglob("*_log.*")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no job log says {text!r}")


def first_run_with_an_epoch(uri, experiment, wanted=lambda run: True, timeout_s=240):
    """Poll the server until a ``wanted`` job run has logged an epoch; that run."""
    client, deadline = MlflowClient(uri), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, runs = server_runs(uri, experiment)
        found = next((r for r in runs if wanted(r) and steps(client, r.info.run_id)), None)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("no job logged an epoch in time")


def test_grid_through_slurm_into_a_tracking_server(workdir, slurm_env, mlflow_server):
    args = [
        "-m",
        *SLURM,
        "model=lenet,mlp,lenet_reg",
        "train.epochs=2",
        "data.train_limit=600",
        "data.test_limit=200",
        f"mlflow.tracking_uri={mlflow_server}",
    ]
    result = run_cli(args, workdir, **{k: slurm_env[k] for k in ("SLURM_CONF", "PATH")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sacct" not in result.stdout + result.stderr
    client, every_run = server_runs(mlflow_server, children_only=False)
    for run in assert_one_parent_with_children(every_run, 3):
        assert run.info.status == "FINISHED"
        for key in METRICS:
            assert steps(client, run.info.run_id, key) == [1, 2]


def test_scancel_of_one_job_is_reported_killed_and_a_relaunch_finishes_it(workdir, slurm_env, mlflow_server_process):
    server, mlflow_server = mlflow_server_process
    experiment = "preemption"
    args = interrupted_sweep(mlflow_server, experiment, "model=lenet,mlp")
    sweep = start_sweep(args, workdir, slurm_env)
    client = MlflowClient(mlflow_server)
    lenet = first_run_with_an_epoch(mlflow_server, experiment, lambda r: r.data.params.get("model.name") == "lenet")
    with paused(server):  # the job can log no further epoch, so the cancel lands mid-run whatever an epoch takes
        # SLURM 22.05 cancels an array task by its <array job>_<task> name only: the run's slurm_job_id tag.
        subprocess.run(["scancel", lenet.data.tags["slurm_job_id"]], env=slurm_env, check=True)
        wait_for_job_log(workdir, f"ending run {lenet.info.run_id} KILLED")
    output, _ = sweep.communicate(timeout=240)
    assert sweep.returncode == 1, output[-3000:]
    assert "Sweep summary: 2 jobs: 1 finished, 0 failed, 1 killed" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # KILLED before its run ended, whichever epoch it had logged when the server was paused.
    assert client.get_run(lenet.info.run_id).info.status == "KILLED"
    _, every_run = server_runs(mlflow_server, experiment, children_only=False)
    (parent,) = [r for r in every_run if r.data.tags.get("sweep") == "true"]
    assert parent.data.metrics["jobs_killed"] == 1 and parent.data.metrics["jobs_finished"] == 1

    relaunch = run_cli(args, workdir, SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"])
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    assert client.get_run(lenet.info.run_id).info.status == "FINISHED"
    for key in METRICS:
        assert steps(client, lenet.info.run_id, key) == [1, 2, 3, 4]
    _, every_run = server_runs(mlflow_server, experiment, children_only=False)
    # The relaunch continues the cancelled run and skips the finished one; both stay children of the one parent.
    assert_one_parent_with_children(every_run, 2, skipped=1)


def test_a_job_out_of_time_requeues_itself_and_finishes_its_run(workdir, slurm_env, mlflow_server_process):
    server, mlflow_server = mlflow_server_process
    experiment = "requeue"
    # Under 10 minutes, submitit counts a job signalled at any time as out of time (not preempted).
    # Not 1 minute: SLURM would then send its own warning signal as the requeued job starts,
    # before submitit's handler is in place, and the signal would kill it.
    args = interrupted_sweep(mlflow_server, experiment, "hydra.launcher.timeout_min=5")
    sweep = start_sweep(args, workdir, slurm_env)
    client = MlflowClient(mlflow_server)
    run = first_run_with_an_epoch(mlflow_server, experiment)
    # What SLURM sends signal_delay_s before the time limit (sent now, so the test need not wait for it):
    # submitit requeues the job, one of its max_num_timeout requeues.
    with paused(server):  # the job can log no further epoch, so the signal lands mid-run whatever an epoch takes
        subprocess.run(["scancel", "--signal=USR2", run.data.tags["slurm_job_id"]], env=slurm_env, check=True)
        wait_for_job_log(workdir, f"ending run {run.info.run_id} KILLED")
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output[-3000:]
    assert "Sweep summary: 1 jobs: 1 finished, 0 failed, 0 killed" in output, output[-3000:]
    job_log = next((workdir / "outputs" / "multirun").rglob("*_log.err")).read_text()
    assert "this job is timed-out" in job_log and "DUE TO JOB REQUEUE" in job_log, job_log[-3000:]
    _, (finished,) = server_runs(mlflow_server, experiment)
    assert finished.info.run_id == run.info.run_id and finished.info.status == "FINISHED"
    for key in METRICS:
        assert steps(client, run.info.run_id, key) == [1, 2, 3, 4]


def test_a_two_trial_study_is_pruned_from_the_compute_side(workdir, slurm_env, mlflow_server):
    """The hopeless trial's SLURM job reads the study through the storage after each epoch and stops itself."""
    experiment = "slurm_search"
    # Random sampler, seed 11: trial 0 draws lr 0.1, trial 1 lr 1e-5 (as in test_optuna_sweeper.py).
    args = [
        "-m",
        *SLURM,
        "hydra/sweeper=optuna",
        "model=mlp",
        "optimizer.lr=choice(0.1,0.00001)",
        "train.epochs=3",
        "data.train_limit=600",
        "data.test_limit=200",
        "data.val_size=200",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=11",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruner_startup_trials=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        f"mlflow.tracking_uri={mlflow_server}",
        f"mlflow.experiment={experiment}",
    ]
    result = run_cli(args, workdir, SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 jobs: 1 finished, 0 failed, 0 killed, 0 skipped, 1 pruned" in result.stdout, result.stdout[-3000:]
    storage = f"sqlite:///{workdir / 'outputs' / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    client, runs = server_runs(mlflow_server, experiment)
    pruned = next(r for r in runs if r.data.tags["trial_number"] == "1")
    assert pruned.data.tags["trial_state"] == "PRUNED" and pruned.info.status == "FINISHED"
    assert pruned.data.tags["slurm_job_id"], "the trial ran in a SLURM job"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_acc")] == [1]
