"""The one door to the MLflow tracking store: every MLflow call of the package goes through here.

``Store`` wraps ``MlflowClient`` with explicit run ids (never the fluent API's
process-global active run), so joblib workers, SLURM jobs and the launching
process can each address the runs they own. Searches page through every
result: no caller sees a silently truncated list. URIs are parsed in ``uris`` only.
Who owns a RUNNING run is ``ownership``'s business, built on these calls.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_SOURCE_NAME

from lenet_sweep.signals import held
from lenet_sweep.uris import (
    SERVER_RESTART_SECONDS,
    TrackingError,
    check_reachable,
    default_artifact_location,
    is_server,
    redact,
    resolve_tracking_uri,
    sqlite_path,
    store_exists,
)

# What callers take from here besides Store: MLflow's names, and the URI functions (``uris``) beside the store.
__all__ = [
    "MLFLOW_GIT_COMMIT",
    "MLFLOW_PARENT_RUN_ID",
    "MLFLOW_RUN_NAME",
    "SERVER_RESTART_SECONDS",
    "Run",
    "Store",
    "StoreRefused",
    "TrackingError",
    "check_reachable",
    "default_artifact_location",
    "is_server",
    "redact",
    "resolve_tracking_uri",
    "sqlite_path",
    "store_exists",
]

FINGERPRINT_TAG = "config_fingerprint"
SWEEP_FINGERPRINT_TAG = "sweep_fingerprint"
# The fingerprint without the seed: the MLflow UI groups runs by it to draw the mean and band over seeds.
CONFIG_GROUP_TAG = "config_group"
SWEEP_JOBS_ARTIFACT = "sweep_jobs.json"  # on a sweep's parent run: every job of the sweep, in launch order
FAILURE_TAG = "failure_reason"
TRIAL_STATE_TAG = "trial_state"  # on a search trial's run: COMPLETE, PRUNED or FAILED
TUNED_FROM_TAG = "tuned_from"  # a compare run of tune-then-compare: the study whose best trial it trains
CHECKPOINT_TAG = "checkpoint_path"
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
PAGE_SIZE = 1000  # runs per search request; searches page until the store has no more

# The store refused a request (a bad filter, a run that does not exist, a server's error).
StoreRefused = MlflowException


def _refused_write(tracking_uri: str, error: MlflowException, what: str) -> TrackingError | None:
    """A one-line ``TrackingError`` when ``error`` is the server refusing this login ``what``; else None."""
    if error.get_http_status_code() != 403:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no login)"
    return TrackingError(
        f"MLflow tracking server {tracking_uri} refused user '{user}' {what} (403 Forbidden): "
        "ask the experiment's owner or an admin for EDIT permission, or choose another mlflow.experiment"
    )


# --- the store -------------------------------------------------------------------------


class _HeldCalls:
    """A database store's ``MlflowClient``, each method run with SIGINT and SIGTERM held (``signals.held``).

    Against SQLite or PostgreSQL the transaction lives in this process: a signal raised inside it can
    leave it open and the database locked, so the run could not be ended. A server's requests are whole
    on the server, and may retry for minutes while it restarts, so its client is left as it is.
    """

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args, **kwargs):
            with held():
                return attribute(*args, **kwargs)

        return call


class Store:
    """One tracking store (``uri``): experiments, runs, params, metrics, tags and artifacts."""

    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri
        if is_server(tracking_uri):
            self._client = MlflowClient(tracking_uri)
        else:
            with held():  # opening a new database creates its tables
                self._client = _HeldCalls(MlflowClient(tracking_uri))

    @classmethod
    def open_existing(cls, tracking_uri: str) -> Store:
        """An existing store; ``TrackingError`` naming the URI otherwise (a store is never created)."""
        if not store_exists(tracking_uri):
            raise TrackingError(f"MLflow store {tracking_uri} does not exist (no runs were logged there)")
        check_reachable(tracking_uri)
        return cls(tracking_uri)

    # experiments

    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``, or None where it does not exist."""
        experiment = self._client.get_experiment_by_name(name)
        return None if experiment is None else experiment.experiment_id

    def get_or_create_experiment(self, name: str, artifact_location: str | None) -> str:
        """The id of experiment ``name``, created if missing (safe when parallel jobs race to create it)."""
        found = self.experiment_id(name)
        if found is not None:
            return found
        try:
            return self._client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as error:
            found = self.experiment_id(name)
            if found is None:
                raise _refused_write(self.uri, error, f"creating experiment '{name}'") or error from None
            return found

    def require_experiment(self, name: str) -> str:
        """The id of experiment ``name``; ``TrackingError`` naming it and the store when it is missing."""
        found = self.experiment_id(name)
        if found is None:
            known = ", ".join(sorted(e.name for e in self._client.search_experiments()))
            raise TrackingError(f"experiment '{name}' not found in {self.uri} (experiments there: {known or 'none'})")
        return found

    def experiment_name(self, experiment_id: str) -> str:
        return self._client.get_experiment(experiment_id).name

    # finding runs

    def search_runs(
        self,
        experiment_id: str,
        filter_string: str = "",
        order_by: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Every run matching ``filter_string`` (all pages), or the first ``limit`` of them."""
        runs: list[Run] = []
        token = None
        while limit is None or len(runs) < limit:
            page_size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(runs))
            page = self._client.search_runs(
                [experiment_id], filter_string, max_results=page_size, order_by=list(order_by or ()), page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs

    def newest_run(self, experiment_id: str, filter_string: str) -> Run | None:
        """The most recently started run matching ``filter_string``."""
        found = self.search_runs(experiment_id, filter_string, ["attributes.start_time DESC"], limit=1)
        return found[0] if found else None

    def runs_with_fingerprint(self, experiment_id: str, fingerprint: str, statuses: Iterable[str]) -> list[Run]:
        """Runs of the experiment with this config fingerprint and one of ``statuses``, newest first."""
        wanted = set(statuses)
        runs = self.search_runs(
            experiment_id, f"tags.{FINGERPRINT_TAG} = '{fingerprint}'", ["attributes.start_time DESC"]
        )
        return [run for run in runs if run.info.status in wanted]

    def running_runs(self, experiment_id: str) -> list[Run]:
        return self.search_runs(experiment_id, "attributes.status = 'RUNNING'")

    def children(self, parent: Run) -> list[Run]:
        """The runs whose parent is ``parent``, newest first."""
        return self.search_runs(
            parent.info.experiment_id,
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'",
            ["attributes.start_time DESC"],
        )

    def get_run(self, run_id: str) -> Run:
        return self._client.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list[Metric]:
        return self._client.get_metric_history(run_id, key)

    # a run's life

    def create_run(
        self, experiment_id: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None
    ) -> str:
        """Create a RUNNING run (a child of ``parent_run_id`` when given) and return its id.

        Passwords in URLs in its name and tags are redacted; a server refusing the login a run
        there is a ``TrackingError``.
        """
        run_name = redact(run_name)
        all_tags = {MLFLOW_RUN_NAME: run_name, MLFLOW_SOURCE_NAME: "lenet_sweep", **tags}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        all_tags = {key: redact(str(value)) for key, value in all_tags.items()}
        try:
            return self._client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
        except MlflowException as error:
            what = f"a run in experiment '{self.experiment_name(experiment_id)}'"
            raise _refused_write(self.uri, error, what) or error from None

    def reopen_run(self, run_id: str) -> None:
        """Mark an ended run RUNNING again, clearing the reason it ended with."""
        if FAILURE_TAG in self.get_run(run_id).data.tags:
            self._client.delete_tag(run_id, FAILURE_TAG)
        self._client.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Mark the run FINISHED, FAILED or KILLED, recording ``reason`` as a tag when given."""
        if reason:
            # MLflow caps tag values; the start of the message says what happened.
            self._client.set_tag(run_id, FAILURE_TAG, reason[:4000])
        self._client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(key, "None" if value is None else redact(str(value))) for key, value in params.items()]
        for start in range(0, len(items), PARAM_BATCH):
            self._client.log_batch(run_id, params=items[start : start + PARAM_BATCH])

    def log_param_once(self, run_id: str, key: str, value: str) -> bool:
        """Log param ``key`` unless the run already has it with another value; whether it holds ``value`` now.

        Params never change once logged, and SQL stores enforce that with a unique key, so of
        two processes racing to log one key with different values exactly one succeeds.
        """
        value = redact(value)
        try:
            self._client.log_param(run_id, key, value)
        except MlflowException as error:
            if error.error_code != "INVALID_PARAMETER_VALUE":
                raise
            return self.get_run(run_id).data.params.get(key) == value
        return True

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """All ``metrics`` at ``step`` in one request (for a job's epochs, step = epoch)."""
        timestamp_ms = int(time.time() * 1000)
        self._client.log_batch(
            run_id, metrics=[Metric(key, value, timestamp_ms, step) for key, value in metrics.items()]
        )

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._client.log_batch(run_id, tags=[RunTag(key, redact(str(value))) for key, value in tags.items()])

    def delete_tag(self, run_id: str, key: str) -> None:
        self._client.delete_tag(run_id, key)

    # artifacts and inputs

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, directory: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifacts(run_id, str(directory), artifact_path)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self._client.log_figure(run_id, figure, artifact_file)

    def log_dict(self, run_id: str, dictionary: Any, artifact_file: str) -> None:
        self._client.log_dict(run_id, dictionary, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._client.log_text(run_id, text, artifact_file)

    def download_artifact(self, run_id: str, path: str, directory: Path) -> Path:
        return Path(self._client.download_artifacts(run_id, path, str(directory)))

    def log_dataset_input(
        self,
        run_id: str,
        name: str,
        digest: str,
        source: str,
        profile: str,
        input_tags: Mapping[str, str],
    ) -> None:
        """Record a data set as the run's MLflow dataset input (shown on the run's page in the UI)."""
        entity = Dataset(name=name, digest=digest, source_type="local", source=source, profile=profile)
        dataset_input = DatasetInput(entity, [InputTag(key, value) for key, value in input_tags.items()])
        try:
            self._client.log_inputs(run_id, datasets=[dataset_input])
        except MlflowException:  # a parallel job registered the same data set first: it exists now, so use it
            self._client.log_inputs(run_id, datasets=[dataset_input])
