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

from lenet_sweep import ownership, store
from lenet_sweep.store import TRIAL_STATE_TAG, Run, Store, StoreRefused


class StatusError(RuntimeError):
    """The sweep cannot be found or read; the message names what is missing."""


@dataclass(frozen=True)
class JobStatus:
    status: str  # FINISHED, PRUNED (an Optuna trial stopped early), RUNNING, FAILED, KILLED, or MISSING (never started)
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


def find_sweep(runs: Store, experiment_id: str, parent_run_id: str | None) -> Run:
    """The sweep's parent run: ``parent_run_id``, or the experiment's most recently started sweep."""
    if parent_run_id:
        try:
            run = runs.get_run(parent_run_id)
        except StoreRefused:
            raise StatusError(f"--sweep {parent_run_id}: no such run") from None
        if run.data.tags.get("sweep") != "true":
            raise StatusError(f"--sweep {parent_run_id}: run {run.info.run_name!r} is not a sweep's parent run")
        return run
    latest = runs.newest_run(experiment_id, "tags.sweep = 'true'")
    if latest is None:
        raise StatusError("no sweep in this experiment yet (run one with `python -m lenet_sweep -m ...`)")
    return latest


def planned_jobs(runs: Store, parent: Run) -> list[dict]:
    """The jobs the sweep's parent lists; an older parent without the list gives its children instead."""
    try:
        with tempfile.TemporaryDirectory() as directory:
            listing = runs.download_artifact(parent.info.run_id, store.SWEEP_JOBS_ARTIFACT, Path(directory))
            return json.loads(listing.read_text())
    except (StoreRefused, OSError):
        return [
            {
                "run_name": run.info.run_name,
                store.FINGERPRINT_TAG: run.data.tags.get(store.FINGERPRINT_TAG),
                "epochs": None,
            }
            for run in runs.children(parent)
        ]


def job_statuses(runs: Store, parent: Run, now: float | None = None) -> list[JobStatus]:
    """Each planned job's run: the parent's child with its fingerprint, else a FINISHED run it skipped to."""
    now = time.time() if now is None else now
    children = runs.children(parent)
    statuses = []
    for job in planned_jobs(runs, parent):
        fingerprint = job.get(store.FINGERPRINT_TAG)
        run = next((r for r in children if r.data.tags.get(store.FINGERPRINT_TAG) == fingerprint), None)
        if run is None and fingerprint:
            finished = runs.runs_with_fingerprint(parent.info.experiment_id, fingerprint, ["FINISHED"])
            run = finished[0] if finished else None
        statuses.append(_status_of(runs, job, run, now))
    return statuses


def _status_of(runs: Store, job: dict, run: Run | None, now: float) -> JobStatus:
    if run is None:
        return JobStatus("MISSING", job["run_name"], 0, job.get("epochs"), None, "", None)
    history = runs.metric_history(run.info.run_id, "test_acc")
    last = max(history, key=lambda m: m.step, default=None)
    total = run.data.params.get("train.epochs")
    status = run.info.status
    if status == "FINISHED" and run.data.tags.get(TRIAL_STATE_TAG) == "PRUNED":
        status = "PRUNED"  # its study's pruner stopped it early: done, not failed
    return JobStatus(
        status,
        run.info.run_name,
        last.step if last else 0,
        int(total) if total else job.get("epochs"),
        last.value if last else None,
        run.data.tags.get(ownership.HOST_TAG, ""),
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
    uri = store.resolve_tracking_uri(args.tracking_uri, Path.cwd())
    try:
        runs = Store.open_existing(uri)
        parent = find_sweep(runs, runs.require_experiment(args.experiment), args.sweep)
        statuses = job_statuses(runs, parent)
    except (StatusError, store.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep {parent.info.run_id} ({parent.info.run_name}): {parent.info.status}")
    print(format_table(statuses))
    finished = sum(s.status == "FINISHED" for s in statuses)
    pruned = sum(s.status == "PRUNED" for s in statuses)
    print(f"{finished} of {len(statuses)} jobs FINISHED" + (f", {pruned} PRUNED" if pruned else ""))
    return 0 if statuses and finished + pruned == len(statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
