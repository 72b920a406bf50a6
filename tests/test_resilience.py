"""Sweeps that survive: failure isolation, skip-finished, resume, parallel and server-backed stores."""

import os
import signal

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import SMALL, run_cli, runs_of, start_cli, store_locked, wait_for_runs
from tests.helpers.runs import METRICS, assert_one_parent_with_children, steps

TWO_EPOCHS = ["train.epochs=2", "data.train_limit=600", "data.test_limit=200"]

pytestmark = pytest.mark.slow  # CLI sweeps and an MLflow server (make test-fast leaves these out)


def test_diverging_job_fails_alone_and_the_sweep_reports_it(workdir):
    result = run_cli(["-m", "model=mlp", "optimizer.lr=0.01,1e6,0.02"] + SMALL, workdir)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Sweep summary: 3 jobs: 2 finished, 1 failed, 0 killed, 0 skipped" in result.stdout
    client, runs = runs_of(workdir)
    by_lr = {r.data.params["optimizer.lr"]: r for r in runs}
    assert by_lr["1000000.0"].info.status == "FAILED"
    assert "DivergedError" in by_lr["1000000.0"].data.tags["failure_reason"]
    assert by_lr["0.01"].info.status == by_lr["0.02"].info.status == "FINISHED"
    parent = [r for r in runs_of(workdir, children_only=False)[1] if r.data.tags.get("sweep") == "true"][0]
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_failed"] == 1

    relaunch = run_cli(["-m", "model=mlp", "optimizer.lr=0.01,0.02"] + SMALL, workdir)
    assert relaunch.returncode == 0
    assert "2 jobs: 0 finished, 0 failed, 0 killed, 2 skipped" in relaunch.stdout
    assert relaunch.stdout.count("already FINISHED") == 2 and "Epoch 1" not in relaunch.stdout
    assert "Nothing to run" in relaunch.stdout
    assert len(runs_of(workdir)[1]) == 3, "a relaunch of finished jobs must not create runs"


def test_a_sigkilled_joblib_sweep_relaunched_has_one_parent_and_every_epoch_once(workdir):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2", *TWO_EPOCHS, "train.threads=1"]
    sweep = start_cli(args, workdir)
    wait_for_runs(workdir, sweep, lambda client, runs: any(steps(client, r.info.run_id) for r in runs))
    # Hold every job at its next write to the store (none can end its run), then kill them all there:
    # the launcher and its workers, as the OOM killer or a lost node would.
    with store_locked(workdir):
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.communicate(timeout=60)
    _, every_run = runs_of(workdir, children_only=False)
    assert "RUNNING" in {r.info.status for r in every_run}

    relaunch = run_cli(args, workdir)
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    assert "was left RUNNING (its process" in relaunch.stderr and "relaunch 2 of sweep" in relaunch.stderr
    client, every_run = runs_of(workdir, children_only=False)
    assert {r.info.status for r in every_run} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in every_run]
    for child in assert_one_parent_with_children(every_run, 3):
        for key in METRICS:
            assert steps(client, child.info.run_id, key) == [1, 2]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sigterm_ends_the_job_killed_and_the_summary_counts_it(workdir, launcher):
    # The first job has epochs enough never to finish before the signal; the second finishes.
    args = ["-m", f"hydra/launcher={launcher}", "train.epochs=1000,2", *TWO_EPOCHS[1:], "train.threads=1"]
    sweep = start_cli(args + (["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []), workdir)

    def victim_trains(client, runs):
        return any(r.data.params.get("train.epochs") == "1000" and steps(client, r.info.run_id) for r in runs)

    runs = wait_for_runs(workdir, sweep, victim_trains)
    victim = next(r for r in runs if r.data.params.get("train.epochs") == "1000")
    os.kill(int(victim.data.tags["pid"]), signal.SIGTERM)  # scancel, preemption, a launcher shutting down
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0, output[-3000:]

    client, every_run = runs_of(workdir, children_only=False)
    assert client.get_run(victim.info.run_id).info.status == "KILLED", output[-3000:]
    assert "received signal 15" in client.get_run(victim.info.run_id).data.tags["failure_reason"]
    (parent,) = [r for r in every_run if r.data.tags.get("sweep") == "true"]
    if launcher == "joblib":  # the other worker's job runs on; the launcher reports both
        assert "Sweep summary: 2 jobs: 1 finished, 0 failed, 1 killed" in output, output[-3000:]
        assert parent.info.status == "FAILED"
    else:  # the signal reached the launching process itself: the sweep stops after its summary
        assert "Sweep summary: 1 jobs: 0 finished, 0 failed, 1 killed" in output, output[-3000:]
        assert parent.info.status == "KILLED" and sweep.returncode == 128 + signal.SIGTERM
    assert parent.data.metrics["jobs_killed"] == 1
    assert "no status" not in output and "RUNNING" not in {r.info.status for r in every_run}


def test_four_parallel_joblib_jobs_into_sqlite(workdir):
    result = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=0,1,2,3"] + TWO_EPOCHS, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, runs = runs_of(workdir)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        for key in METRICS:
            assert steps(client, run.info.run_id, key) == [1, 2]
    assert_one_parent_with_children(runs_of(workdir, children_only=False)[1], 4)


def test_grid_against_a_tracking_server(workdir, mlflow_server):
    result = run_cli(
        ["-m", "hydra/launcher=joblib", "model=lenet,mlp,lenet_reg", f"mlflow.tracking_uri={mlflow_server}"]
        + TWO_EPOCHS,
        workdir,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("lenet_sweep")
    every_run = client.search_runs([experiment.experiment_id])
    children = assert_one_parent_with_children(every_run, 3)
    for run in children:
        assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model", "hydra"}
    assert not (workdir / "outputs" / "mlflow.db").exists(), "nothing may go to the local store"
