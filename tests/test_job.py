"""A job's run from creation to end, in-process: interrupted at a chosen epoch, died, taken over, resumed."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lenet_sweep import identity, ownership, store
from lenet_sweep.results import JobKilled
from lenet_sweep.signals import Terminated
from lenet_sweep.store import Store
from tests.helpers.cli import store_uri
from tests.helpers.jobs import TINY, compose_config, run_and_die_after_epoch, run_in_process
from tests.helpers.runs import METRICS, steps

FOUR_EPOCHS = ("train.epochs=4", *TINY)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One directory and store for the module's jobs (a new SQLite store takes MLflow seconds to create)."""
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture
def experiment(request):
    """Each test's own experiment in the module's store: ``mlflow.experiment=<test name>``."""
    return f"mlflow.experiment={request.node.name[:60]}"


def terminate_at_epoch(epoch: int):
    def hook(metrics):
        if metrics.epoch == epoch:
            raise Terminated("received signal 15")

    return hook


def history(client, run_id):
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in METRICS
        if key != "epoch_seconds"
    }


def only_run(workdir: Path, experiment: str):
    client = MlflowClient(store_uri(workdir))
    (run,) = client.search_runs([client.get_experiment_by_name(experiment.split("=", 1)[1]).experiment_id])
    return client, run


def test_a_job_stopped_at_epoch_2_ends_killed_and_a_rerun_resumes_it_to_identical_metrics(workdir, experiment):
    with pytest.raises(JobKilled) as stopped:
        run_in_process(workdir, experiment, *FOUR_EPOCHS, epoch_hook=terminate_at_epoch(2))
    assert stopped.value.result.status == "KILLED" and isinstance(stopped.value.interrupt, Terminated)
    client, run = only_run(workdir, experiment)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "interrupted: received signal 15"
    assert steps(client, run.info.run_id) == [1, 2]

    result = run_in_process(workdir, experiment, *FOUR_EPOCHS)
    assert (result.status, result.run_id) == ("FINISHED", run.info.run_id)
    client, run = only_run(workdir, experiment)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    for key in METRICS:
        assert steps(client, run.info.run_id, key) == [1, 2, 3, 4]

    uninterrupted = experiment + "-uninterrupted"
    run_in_process(workdir, uninterrupted, *FOUR_EPOCHS)
    assert history(client, run.info.run_id) == history(client, only_run(workdir, uninterrupted)[1].info.run_id)


@pytest.mark.slow  # a child process imports torch and MLflow
def test_a_job_whose_process_died_is_closed_and_resumed_by_the_next_launch(workdir, experiment):
    child = multiprocessing.get_context("spawn").Process(
        target=run_and_die_after_epoch, args=(workdir, (experiment, *FOUR_EPOCHS), 2)
    )
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 137
    client, run = only_run(workdir, experiment)
    assert run.info.status == "RUNNING" and steps(client, run.info.run_id) == [1, 2]

    result = run_in_process(workdir, experiment, *FOUR_EPOCHS)
    assert (result.status, result.run_id) == ("FINISHED", run.info.run_id)
    client, run = only_run(workdir, experiment)
    assert run.data.params["owner.1"] == ownership.owner_token()  # closed as an orphan: claimed once
    assert run.data.params["owner.2"] == ownership.owner_token()  # resumed: claimed again
    for key in METRICS:
        assert steps(client, run.info.run_id, key) == [1, 2, 3, 4]


def test_a_run_that_died_before_its_first_epoch_is_taken_over_in_place(workdir, experiment):
    cfg = compose_config(experiment, "train.epochs=1", *TINY)
    runs = Store(store_uri(workdir))
    experiment_id = runs.get_or_create_experiment(cfg.mlflow.experiment, None)
    dead_elsewhere = {ownership.HOST_TAG: "node-elsewhere", ownership.PID_TAG: "4242", ownership.HEARTBEAT_TAG: "0"}
    fingerprint = identity.config_fingerprint(identity.flat_config(cfg))
    died = runs.create_run(experiment_id, "died", {**dead_elsewhere, store.FINGERPRINT_TAG: fingerprint})

    result = run_in_process(workdir, experiment, "train.epochs=1", *TINY)
    assert (result.status, result.run_id) == ("FINISHED", died)
    client, run = only_run(workdir, experiment)
    assert steps(client, died) == [1] and run.data.tags[ownership.HOST_TAG] != "node-elsewhere"


def test_a_checkpoint_that_cannot_be_loaded_fails_the_resumed_run_never_leaving_it_running(workdir, experiment):
    with pytest.raises(JobKilled):
        run_in_process(workdir, experiment, *FOUR_EPOCHS, epoch_hook=terminate_at_epoch(2))
    client, run = only_run(workdir, experiment)
    Path(run.data.tags["checkpoint_path"]).write_bytes(b"not a checkpoint")

    with pytest.raises(Exception, match="load"):
        run_in_process(workdir, experiment, *FOUR_EPOCHS)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert "UnpicklingError" in run.data.tags["failure_reason"], run.data.tags["failure_reason"]


def test_runs_orphaned_on_another_host_are_closed_by_their_stale_heartbeat(workdir, experiment):
    runs = Store(store_uri(workdir))
    experiment_id = runs.get_or_create_experiment(experiment.split("=", 1)[1], None)
    elsewhere = {ownership.HOST_TAG: "node-elsewhere", ownership.PID_TAG: "4242"}
    stale = runs.create_run(experiment_id, "stale", {**elsewhere, ownership.HEARTBEAT_TAG: "1"})
    alive = runs.create_run(experiment_id, "alive", {**elsewhere, ownership.HEARTBEAT_TAG: "9999999999"})

    run_in_process(workdir, experiment, "train.epochs=1", *TINY)
    assert runs.get_run(stale).info.status == "KILLED"
    assert "its owner on node-elsewhere (pid 4242) has been silent" in runs.get_run(stale).data.tags["failure_reason"]
    assert runs.get_run(alive).info.status == "RUNNING"
    runs.end_run(alive, "KILLED")


def test_a_job_whose_heartbeat_cannot_write_stops_itself_killed_before_the_orphan_window(workdir, experiment):
    window_seconds = 6.0

    def lock_the_store_after_epoch_1(metrics):
        if metrics.epoch != 1:
            return
        lock = sqlite3.connect(workdir / "outputs" / "mlflow.db", timeout=30)
        lock.execute("BEGIN EXCLUSIVE")  # every heartbeat now fails: "database is locked"
        try:
            time.sleep(120)  # the heartbeat's interrupt ends this
        finally:
            lock.rollback()
            lock.close()

    overrides = (experiment, "train.epochs=3", f"sweep.orphan_after_minutes={window_seconds / 60}", *TINY)
    with pytest.raises(JobKilled) as stopped:
        run_in_process(workdir, *overrides, epoch_hook=lock_the_store_after_epoch_1)
    assert isinstance(stopped.value.interrupt, ownership.OwnershipLost)
    client, run = only_run(workdir, experiment)
    reason = run.data.tags["failure_reason"]
    assert run.info.status == "KILLED" and reason.startswith("interrupted: heartbeat failed for "), reason
    assert float(reason.split("failed for ")[1].split(" s")[0]) < window_seconds, reason
    assert steps(client, run.info.run_id) == [1]


def test_skip_finished_can_be_turned_off(workdir, experiment):
    # Skipping itself is covered by test_resilience's relaunch of a sweep whose jobs finished.
    assert run_in_process(workdir, experiment, "train.epochs=1", *TINY).status == "FINISHED"
    assert run_in_process(workdir, experiment, "train.epochs=1", *TINY).status == "SKIPPED"
    rerun = run_in_process(workdir, experiment, "train.epochs=1", "sweep.skip_finished=false", *TINY)
    assert rerun.status == "FINISHED"
    client = MlflowClient(store_uri(workdir))
    assert len(client.search_runs([client.get_experiment_by_name(experiment.split("=", 1)[1]).experiment_id])) == 2


def test_jobs_of_one_process_share_their_data_on_the_device(tmp_path):
    """The packed launcher's members (and jobs run one after another) read one copy of their data set."""
    import torch

    from lenet_sweep.job import _device_data, load_job_dataset

    cfg = compose_config(*TINY)
    dataset = load_job_dataset(cfg, tmp_path)
    first = _device_data(dataset, cfg.data.mean, cfg.data.std, torch.device("cpu"))
    assert _device_data(dataset, cfg.data.mean, cfg.data.std, torch.device("cpu")) is first
    other = _device_data(dataset, cfg.data.mean + 1, cfg.data.std, torch.device("cpu"))
    assert other is not first and torch.allclose(other.train_x, first.train_x - 1 / cfg.data.std)
