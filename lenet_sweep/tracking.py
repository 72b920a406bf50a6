"""MLflow bookkeeping: where runs go, how they are found again, and how they end.

Everything goes through ``MlflowClient`` with explicit run ids rather than the
fluent API's process-global active run, so joblib workers, SLURM jobs and the
launching process can each address the runs they own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
)

DEFAULT_STORE = Path("outputs") / "mlflow.db"
FINGERPRINT_TAG = "config_fingerprint"
SWEEP_FINGERPRINT_TAG = "sweep_fingerprint"
# The fingerprint without the seed: the MLflow UI groups runs by it to draw the mean and band over seeds.
CONFIG_GROUP_TAG = "config_group"
SWEEP_JOBS_ARTIFACT = "sweep_jobs.json"  # on a sweep's parent run: every job of the sweep, in launch order
FAILURE_TAG = "failure_reason"
CHECKPOINT_TAG = "checkpoint_path"
# Which process owns a RUNNING run, so that a later launch on the same host can tell a dead owner.
HOST_TAG = "host"
PID_TAG = "pid"
# Which SLURM job owns it, and when its owner was last alive: orphans are found from any host.
SLURM_JOB_TAG = "slurm_job_id"
HEARTBEAT_TAG = "heartbeat"
HEARTBEAT_SECONDS = 60
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


def resolve_tracking_uri(configured: str | None, start_dir: Path) -> str:
    """``configured`` if set, else ``MLFLOW_TRACKING_URI``, else the project's SQLite store under ``start_dir``."""
    if configured:
        return configured
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return "sqlite:///" + str((start_dir / DEFAULT_STORE).resolve())


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database (``outputs/mlartifacts`` for the default store).

    Other stores (a tracking server, a file store) decide their own.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri.removeprefix("sqlite:///"))
    return (db_path.parent / "mlartifacts").resolve().as_uri()


def _is_file_store(tracking_uri: str) -> bool:
    """MLflow reads ``file:`` URIs and bare paths as its old file store."""
    return urllib.parse.urlparse(tracking_uri).scheme in ("", "file")


def check_reachable(tracking_uri: str, timeout_seconds: float = 5.0) -> None:
    """Fail fast, naming the URI, when the store cannot be used (MLflow itself retries for minutes)."""
    if _is_file_store(tracking_uri):
        raise TrackingError(
            f"MLflow store {tracking_uri}: file stores are not supported by this MLflow; use "
            "sqlite:///<dir>/mlflow.db (`mlflow migrate-filestore` moves existing runs into one)"
        )
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(f"MLflow tracking server {tracking_uri} is unreachable: {reason}") from None
    elif tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri.removeprefix("sqlite:///"))
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"MLflow store {tracking_uri}: cannot create {db_path.parent}: {error}") from None


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing (safe when parallel jobs race to create it)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def open_existing_store(tracking_uri: str) -> MlflowClient:
    """A client for an existing store; ``TrackingError`` naming the URI otherwise (a store is never created)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise TrackingError(f"MLflow store {tracking_uri} does not exist (no runs were logged there)")
    check_reachable(tracking_uri, timeout_seconds=5.0)
    return MlflowClient(tracking_uri)


def find_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``; ``TrackingError`` naming it and the store when it is missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments()))
        raise TrackingError(
            f"experiment '{name}' not found in {client.tracking_uri} (experiments there: {known or 'none'})"
        )
    return experiment.experiment_id


def find_runs(client: MlflowClient, experiment_id: str, fingerprint: str, statuses: Iterable[str]):
    """Runs of the experiment with this fingerprint and one of ``statuses``, newest first."""
    wanted = set(statuses)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{FINGERPRINT_TAG} = '{fingerprint}'",
        order_by=["attributes.start_time DESC"],
    )
    return [run for run in runs if run.info.status in wanted]


def owner_tags() -> dict[str, str]:
    """Host, process id and SLURM job of the caller, recorded on every run it starts or resumes."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: f"{time.time():.0f}"}
    # An array task is known to squeue and scancel by its <array job>_<task> name only.
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    slurm_job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    tags[SLURM_JOB_TAG] = slurm_job or ""
    return tags


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie has exited; only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _slurm_job_gone(job_id: str) -> bool:
    """True when SLURM says the job is no longer queued or running; False when alive or unknown."""
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False  # no SLURM client here: the heartbeat decides
    if result.returncode == 0:
        return not result.stdout.strip()
    return "invalid job id" in result.stderr.lower()


def orphan_reason(tags: Mapping[str, str], stale_after_seconds: float, now: float | None = None) -> str | None:
    """Why a RUNNING run with these tags has no live owner, or None when it may still have one.

    On the owner's host its process id decides. From any host, a SLURM job that
    the scheduler no longer knows, or a heartbeat older than ``stale_after_seconds``,
    marks the run orphaned.
    """
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG, "")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) != os.getpid() and not _process_alive(int(pid)):
            return f"its process {pid} on {host} ended without closing it"
        return None
    slurm_job = tags.get(SLURM_JOB_TAG)
    if slurm_job and _slurm_job_gone(slurm_job):
        return f"its SLURM job {slurm_job} on {host} is no longer running"
    heartbeat = tags.get(HEARTBEAT_TAG, "")
    age_seconds = (now or time.time()) - float(heartbeat) if heartbeat else None
    if age_seconds is not None and age_seconds > stale_after_seconds:
        return f"its owner on {host} (pid {pid}) has been silent for {age_seconds / 60:.0f} min"
    return None


def close_orphaned_runs(client: MlflowClient, experiment_id: str, stale_after_seconds: float) -> list[tuple[str, str]]:
    """End as KILLED the experiment's RUNNING runs that no live process owns; (run id, reason) of each.

    A SIGKILLed process (out of memory, ``kill -9``, a lost node) cannot close
    its own run. A closed job run stays resumable from its checkpoint.
    """
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000):
        reason = orphan_reason(run.data.tags, stale_after_seconds)
        if reason:
            end_run(client, run.info.run_id, "KILLED", reason)
            closed.append((run.info.run_id, reason))
    return closed


class Heartbeat:
    """While open, stamps the run's heartbeat tag every ``interval_seconds`` from a daemon thread.

    The thread dies with its process, so a run whose heartbeat is old has lost
    its owner wherever that ran (``orphan_reason``).
    """

    def __init__(self, client: MlflowClient, run_id: str, interval_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.client, self.run_id, self.interval_seconds = client, run_id, interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name="mlflow-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def beat(self) -> None:
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.beat()
            except Exception:  # a store hiccup: the next beat tries again
                pass


def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run (a child of ``parent_run_id`` when given) and return its id."""
    all_tags = {MLFLOW_RUN_NAME: run_name, MLFLOW_SOURCE_NAME: "lenet_sweep", **owner_tags(), **tags}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    return client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(key, "None" if value is None else str(value)) for key, value in params.items()]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])


def log_metrics(client: MlflowClient, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
    """All ``metrics`` at ``step`` in one request (for a job's epochs, step = epoch)."""
    timestamp_ms = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, timestamp_ms, step) for key, value in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """Mark the run FINISHED, FAILED or KILLED, recording ``reason`` as a tag when given."""
    if reason:
        # MLflow caps tag values; the start of the message says what happened.
        client.set_tag(run_id, FAILURE_TAG, reason[:4000])
    client.set_terminated(run_id, status=status)


def tags_for_job(override_string: str, sweep_dir: str | None, job_num: int | None) -> dict[str, str]:
    tags = {"hydra.overrides": override_string or "(defaults)"}
    if sweep_dir is not None:
        tags["hydra.sweep_dir"] = sweep_dir
        tags["hydra.job_num"] = str(job_num)
    return tags
