"""Where a sweep stands, from the tracking store alone: ``python -m lenet_sweep.status``.

One line per job of the sweep (its parent run lists them, ``sweep_jobs.json``):
status, run name, epochs done of total, last ``test_acc``, host, and how long
ago its last metric arrived, so a stalled job shows. Reads the store only, so it
works from a laptop against the shared server while the sweep runs elsewhere.
Exit code 0 when every job FINISHED, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from lenet_sweep import tracking


class StatusError(RuntimeError):
    """The sweep cannot be found or read; the message names what is missing."""


@dataclass(frozen=True)
class JobStatus:
    status: str  # FINISHED, RUNNING, FAILED, KILLED, or MISSING (never started)
    run_name: str
    epochs_done: int
    epochs_total: int | None
    test_acc: float | None
    host: str
    last_metric_age_seconds: float | None

    def cells(self) -> tuple[str, ...]:
        total = "?" if self.epochs_total is None else self.epochs_total
        acc = "-" if self.test_acc is None else f"{self.test_acc:.2f}"
        age = "-" if self.last_metric_age_seconds is None else f"{_duration(self.last_metric_age_seconds)} ago"
        return self.status, self.run_name, f"{self.epochs_done}/{total}", acc, self.host or "-", age


HEADER = ("status", "run", "epochs", "test_acc", "host", "last metric")


def format_table(statuses: Sequence[JobStatus]) -> str:
    rows = [HEADER, *(s.cells() for s in statuses)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def find_sweep(client, experiment_id: str, parent_run_id: str | None) -> Run:
    """The sweep's parent run: ``parent_run_id``, or the experiment's most recently started sweep."""
    if parent_run_id:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException:
            raise StatusError(f"--sweep {parent_run_id}: no such run") from None
        if run.data.tags.get("sweep") != "true":
            raise StatusError(f"--sweep {parent_run_id}: run {run.info.run_name!r} is not a sweep's parent run")
        return run
    sweeps = client.search_runs(
        [experiment_id], filter_string="tags.sweep = 'true'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not sweeps:
        raise StatusError("no sweep in this experiment yet (run one with `python -m lenet_sweep -m ...`)")
    return sweeps[0]


def planned_jobs(client, parent: Run) -> list[dict]:
    """The jobs the sweep's parent lists; an older parent without the list gives its children instead."""
    try:
        with tempfile.TemporaryDirectory() as directory:
            return json.loads(
                Path(client.download_artifacts(parent.info.run_id, tracking.SWEEP_JOBS_ARTIFACT, directory)).read_text()
            )
    except (MlflowException, OSError):
        return [
            {
                "run_name": run.info.run_name,
                tracking.FINGERPRINT_TAG: run.data.tags.get(tracking.FINGERPRINT_TAG),
                "epochs": None,
            }
            for run in _children(client, parent)
        ]


def _children(client, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=10000,
    )


def job_statuses(client, parent: Run, now: float | None = None) -> list[JobStatus]:
    """Each planned job's run: the parent's child with its fingerprint, else a FINISHED run it skipped to."""
    now = time.time() if now is None else now
    children = _children(client, parent)
    statuses = []
    for job in planned_jobs(client, parent):
        fingerprint = job.get(tracking.FINGERPRINT_TAG)
        run = next((r for r in children if r.data.tags.get(tracking.FINGERPRINT_TAG) == fingerprint), None)
        if run is None and fingerprint:
            finished = tracking.find_runs(client, parent.info.experiment_id, fingerprint, ["FINISHED"])
            run = finished[0] if finished else None
        statuses.append(_status_of(client, job, run, now))
    return statuses


def _status_of(client, job: dict, run: Run | None, now: float) -> JobStatus:
    if run is None:
        return JobStatus("MISSING", job["run_name"], 0, job.get("epochs"), None, "", None)
    history = client.get_metric_history(run.info.run_id, "test_acc")
    last = max(history, key=lambda m: m.step, default=None)
    total = run.data.params.get("train.epochs")
    return JobStatus(
        run.info.status,
        run.info.run_name,
        last.step if last else 0,
        int(total) if total else job.get("epochs"),
        last.value if last else None,
        run.data.tags.get(tracking.HOST_TAG, ""),
        now - max(m.timestamp for m in history) / 1000 if history else None,
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other input error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m lenet_sweep.status", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db")
    parser.add_argument("--experiment", default="lenet_sweep")
    parser.add_argument("--sweep", metavar="PARENT_RUN_ID", help="default: the experiment's most recent sweep")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file; keep the output a table
    uri = tracking.resolve_tracking_uri(args.tracking_uri, Path.cwd())
    try:
        client = tracking.open_existing_store(uri)
        parent = find_sweep(client, tracking.find_experiment(client, args.experiment), args.sweep)
        statuses = job_statuses(client, parent)
    except (StatusError, tracking.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep {parent.info.run_id} ({parent.info.run_name}): {parent.info.status}")
    print(format_table(statuses))
    finished = sum(s.status == "FINISHED" for s in statuses)
    print(f"{finished} of {len(statuses)} jobs FINISHED")
    return 0 if statuses and finished == len(statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
