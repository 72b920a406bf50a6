"""What a sweep's jobs and its launching process leave in the sweep directory for each other.

The launching process writes the parent run's record (``ParentRun``) before any
job starts; every job, whatever launcher runs it and on whichever host, reads it
there and writes its own result (``JobResult``) into its output directory, which
the launching process reads back for the sweep's summary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATUS_FILE = "job_status.json"
PARENT_RUN_FILE = "mlflow_parent_run.json"
STATUSES = ("FINISHED", "FAILED", "KILLED", "SKIPPED", "PRUNED")


@dataclass
class JobResult:
    status: str  # FINISHED, PRUNED (an Optuna trial stopped early; its run is FINISHED), FAILED, KILLED or SKIPPED
    run_name: str
    run_id: str | None = None
    reason: str | None = None
    test_acc: float | None = None

    def write(self, directory: Path) -> None:
        (directory / STATUS_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, directory: Path) -> JobResult | None:
        """The result a job wrote into ``directory``; None when it wrote none (it died, or never ran)."""
        status_file = directory / STATUS_FILE
        return cls(**json.loads(status_file.read_text())) if status_file.is_file() else None


class JobKilled(KeyboardInterrupt):
    """A job was interrupted (Ctrl-C, SIGTERM, requeue, lost ownership) after its run existed; ``result`` says how
    its run ended, ``interrupt`` is what stopped it."""

    def __init__(self, result: JobResult, interrupt: KeyboardInterrupt) -> None:
        super().__init__(str(interrupt))
        self.result, self.interrupt = result, interrupt


@dataclass(frozen=True)
class ParentRun:
    """The sweep's parent run, and which process launched the sweep (``ownership.owner_token``)."""

    run_id: str
    tracking_uri: str
    launcher: str

    def write(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, sweep_dir: Path | None) -> ParentRun | None:
        if sweep_dir is None or not (sweep_dir / PARENT_RUN_FILE).is_file():
            return None
        record = json.loads((sweep_dir / PARENT_RUN_FILE).read_text())
        return cls(record["run_id"], record["tracking_uri"], record.get("launcher", ""))
