"""Sweeps that survive: failure isolation, skip-finished, resume, parallel and server-backed stores."""

import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import SMALL, cli_env, run_cli, runs_of
from tests.helpers.runs import METRICS, assert_one_parent_with_children, steps

TWO_EPOCHS = ["train.epochs=2", "data.train_limit=600", "data.test_limit=200"]

pytestmark = pytest.mark.slow  # CLI sweeps and an MLflow server (make test-fast leaves these out)


def history(client, run_id):
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in METRICS if key != "epoch_seconds"}


def sigkill_after_epoch_two(args, workdir) -> int:
    """Run the CLI until the first "Epoch 2:" line, SIGKILL it there and reap it; its pid."""
    process = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args], cwd=workdir, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "Epoch 2:" in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    return process.pid


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


def test_skip_finished_can_be_turned_off(workdir):
    # Skipping itself is covered by the relaunch in test_diverging_job_fails_alone_and_the_sweep_reports_it.
    args = ["model=mlp"] + SMALL
    assert run_cli(args, workdir).returncode == 0
    rerun = run_cli(args + ["sweep.skip_finished=false"], workdir)
    assert rerun.returncode == 0 and "already FINISHED" not in rerun.stdout
    assert len(runs_of(workdir)[1]) == 2


def test_sigkill_mid_run_then_relaunch_resumes_to_identical_metrics(workdir, tmp_path_factory):
    args = ["train.epochs=4", "data.train_limit=3000", "data.test_limit=500", "train.threads=1"]
    sigkill_after_epoch_two(args, workdir)
    client, runs = runs_of(workdir)
    assert [r.info.status for r in runs] == ["RUNNING"] and steps(client, runs[0].info.run_id)[-1] in (2, 3)

    resumed = run_cli(args, workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume" in resumed.stdout
    client, runs = runs_of(workdir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in METRICS:
        assert steps(client, runs[0].info.run_id, key) == [1, 2, 3, 4]

    reference_dir = tmp_path_factory.mktemp("uninterrupted")
    (reference_dir / "data").symlink_to(workdir / "data")
    assert run_cli(args, reference_dir).returncode == 0
    ref_client, ref_runs = runs_of(reference_dir)
    assert history(client, runs[0].info.run_id) == history(ref_client, ref_runs[0].info.run_id)


def test_a_sigkilled_sweep_leaves_no_run_running_after_the_next_launch(workdir):
    args = ["-m", "seed=0,1", "train.epochs=3", "data.train_limit=2000", "data.test_limit=200", "train.threads=1"]
    pid = sigkill_after_epoch_two(args, workdir)
    client, every_run = runs_of(workdir, children_only=False)
    assert sorted(r.info.status for r in every_run) == ["RUNNING", "RUNNING"]  # the parent and job 0
    orphans = {r.info.run_id for r in every_run}

    relaunch = run_cli(args, workdir)
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    assert relaunch.stderr.count("left RUNNING by a process that is gone") == 2
    client, every_run = runs_of(workdir, children_only=False)
    assert not [r for r in every_run if r.info.status == "RUNNING"]
    old_parent = [r for r in every_run if r.info.run_id in orphans and r.data.tags.get("sweep") == "true"][0]
    assert old_parent.info.status == "KILLED"
    assert f"process {pid} " in old_parent.data.tags["failure_reason"]
    resumed = [r for r in every_run if r.info.run_id in orphans and r.data.tags.get("sweep") != "true"][0]
    assert resumed.info.status == "FINISHED" and "failure_reason" not in resumed.data.tags
    assert steps(client, resumed.info.run_id) == [1, 2, 3]


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
    result = run_cli(["-m", "hydra/launcher=joblib", "model=lenet,mlp,lenet_reg", f"mlflow.tracking_uri={mlflow_server}"]
                     + TWO_EPOCHS, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("lenet_sweep")
    every_run = client.search_runs([experiment.experiment_id])
    children = assert_one_parent_with_children(every_run, 3)
    for run in children:
        assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model", "hydra"}
    assert not (workdir / "outputs" / "mlflow.db").exists(), "nothing may go to the local store"
