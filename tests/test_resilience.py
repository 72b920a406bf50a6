"""Sweeps that survive: failure isolation, skip-finished, resume, parallel and server-backed stores."""

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import SMALL, run_cli, runs_of, start_cli, store_uri, wait_for_runs
from tests.helpers.runs import METRICS, assert_one_parent_with_children, steps

TWO_EPOCHS = ["train.epochs=2", "data.train_limit=600", "data.test_limit=200"]

pytestmark = pytest.mark.slow  # CLI sweeps and an MLflow server (make test-fast leaves these out)


def history(client, run_id):
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in METRICS
        if key != "epoch_seconds"
    }


def sigkill_after_epoch_two(args, workdir) -> int:
    """Run the CLI until the first "Epoch 2:" line, SIGKILL it there and reap it; its pid."""
    process = start_cli(args, workdir)
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


def test_a_sigkilled_joblib_sweep_relaunched_has_one_parent_and_every_epoch_once(workdir):
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=0,1,2",
        "train.epochs=3",
        "data.train_limit=12000",  # epochs long enough that the kill lands mid-run
        "data.test_limit=200",
        "train.threads=1",
    ]
    sweep = start_cli(args, workdir)
    wait_for_runs(workdir, sweep, lambda client, runs: any(steps(client, r.info.run_id) for r in runs))
    os.killpg(sweep.pid, signal.SIGKILL)  # the launcher and its workers, as the OOM killer or a lost node would
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
            assert steps(client, child.info.run_id, key) == [1, 2, 3]


def test_a_run_killed_before_its_first_epoch_is_taken_over_in_place(workdir):
    # A whole MNIST epoch on one thread takes seconds, so the kill lands before it ends.
    args = ["train.epochs=1", "data.test_limit=200", "train.threads=1"]
    process = start_cli(args, workdir)
    (killed,) = wait_for_runs(workdir, process, lambda client, runs: True)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    client, _ = runs_of(workdir)
    assert steps(client, killed.info.run_id) == [], "the run logged an epoch before the kill: nothing to take over"

    relaunch = run_cli(args, workdir)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "take over" in relaunch.stdout + relaunch.stderr
    client, runs = runs_of(workdir)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed.info.run_id, "FINISHED")]
    assert steps(client, killed.info.run_id) == [1]


def test_a_checkpoint_that_cannot_be_loaded_fails_the_resumed_run_never_leaving_it_running(workdir):
    args = ["train.epochs=3", "data.train_limit=3000", "data.test_limit=200", "train.threads=1"]
    sigkill_after_epoch_two(args, workdir)
    client, (run,) = runs_of(workdir)
    Path(run.data.tags["checkpoint_path"]).write_bytes(b"not a checkpoint")

    relaunch = run_cli(args, workdir)
    assert relaunch.returncode != 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert "UnpicklingError" in run.data.tags["failure_reason"], run.data.tags["failure_reason"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sigterm_ends_the_job_killed_and_the_summary_counts_it(workdir, launcher):
    args = [
        "-m",
        f"hydra/launcher={launcher}",
        "seed=0,1",
        "train.epochs=3",
        "data.train_limit=12000",  # epochs long enough that the signal lands mid-run
        "data.test_limit=200",
        "train.threads=1",
    ]
    sweep = start_cli(args + (["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []), workdir)
    runs = wait_for_runs(workdir, sweep, lambda client, runs: any(steps(client, r.info.run_id) for r in runs))
    victim = next(r for r in runs if steps(MlflowClient(store_uri(workdir)), r.info.run_id))
    os.kill(int(victim.data.tags["pid"]), signal.SIGTERM)  # scancel, preemption, a launcher shutting down
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0, output[-3000:]

    client, every_run = runs_of(workdir, children_only=False)
    assert client.get_run(victim.info.run_id).info.status == "KILLED"
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


def test_runs_orphaned_on_another_host_are_closed_by_their_stale_heartbeat(workdir):
    client = MlflowClient(store_uri(workdir))
    experiment_id = client.create_experiment("lenet_sweep")
    elsewhere = {"host": "node-elsewhere", "pid": "4242"}
    stale = client.create_run(experiment_id, tags={**elsewhere, "heartbeat": f"{time.time() - 1200:.0f}"})
    alive = client.create_run(experiment_id, tags={**elsewhere, "heartbeat": f"{time.time():.0f}"})

    result = run_cli(SMALL, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run {stale.info.run_id} was left RUNNING (its owner on node-elsewhere (pid 4242) has been silent" in (
        result.stdout + result.stderr
    )
    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    client.set_terminated(alive.info.run_id, "KILLED")


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
