"""The cluster path for real: submitit_slurm on a one-node SLURM cluster, logging to an MLflow server."""

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import cli_env, run_cli
from tests.helpers.runs import METRICS, assert_one_parent_with_children, steps

pytestmark = pytest.mark.slow  # SLURM, CLI sweeps and an MLflow server

SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=local", "hydra.launcher.cpus_per_task=1"]


def server_runs(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lenet_sweep")
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


def test_grid_through_slurm_into_a_tracking_server(workdir, slurm_env, mlflow_server):
    args = ["-m", *SLURM, "model=lenet,mlp,lenet_reg", "train.epochs=2", "data.train_limit=600",
            "data.test_limit=200", f"mlflow.tracking_uri={mlflow_server}"]
    result = run_cli(args, workdir, **{k: slurm_env[k] for k in ("SLURM_CONF", "PATH")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sacct" not in result.stdout + result.stderr
    client, every_run = server_runs(mlflow_server)
    for run in assert_one_parent_with_children(every_run, 3):
        assert run.info.status == "FINISHED"
        for key in METRICS:
            assert steps(client, run.info.run_id, key) == [1, 2]


def test_scancel_after_epoch_two_then_relaunch_resumes(workdir, slurm_env, mlflow_server):
    experiment = "preemption"
    args = ["-m", *SLURM, "train.epochs=4", "data.train_limit=8000", "data.test_limit=500",
            f"mlflow.tracking_uri={mlflow_server}", f"mlflow.experiment={experiment}"]
    env = cli_env(SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"])
    sweep = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(mlflow_server)
    run_id, deadline = None, time.monotonic() + 240
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        runs = [] if exp is None else [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep") != "true"]
        if runs and len(steps(client, runs[0].info.run_id)) >= 2:
            run_id = runs[0].info.run_id
            break
        time.sleep(0.2)
    assert run_id, "the job never logged epoch 2"
    job_ids = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm_env, capture_output=True, text=True).stdout.split()
    subprocess.run(["scancel", *job_ids], env=slurm_env, check=True)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0, output[-2000:]
    assert client.get_run(run_id).info.status in ("KILLED", "RUNNING")
    assert steps(client, run_id)[-1] < 4

    relaunch = run_cli(args, workdir, SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"])
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in METRICS:
        assert steps(client, run_id, key) == [1, 2, 3, 4]
    children = [r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
                if r.data.tags.get("sweep") != "true"]
    assert len(children) == 1, "the relaunch must continue the cancelled run, not start another"
