"""Multirun bookkeeping in the launching process: one MLflow parent run per sweep, and its summary.

Hydra calls ``SweepCallback`` around a multirun. At the start it checks the
tracking store, creates the experiment (so parallel jobs never race to create
it) and the parent run, and writes the parent's id into the sweep directory,
where every job finds it whatever launcher runs it and on whichever host. At
the end it reads each job's status file, prints the summary, closes the parent
FINISHED or FAILED, and exits non-zero when a job failed.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_sweep import tracking
from lenet_sweep.config import Config, ConfigError, check_known_keys, one_line
from lenet_sweep.job import PARENT_RUN_FILE, STATUS_FILE

STATUSES = ("FINISHED", "FAILED", "KILLED", "SKIPPED")


def _job_order(job_dir: Path):
    return (0, int(job_dir.name), "") if job_dir.name.isdigit() else (1, 0, job_dir.name)


def read_job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job directory of the sweep; a job that died without a status file counts as FAILED."""
    results = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_order):
        status_file = job_dir / STATUS_FILE
        if status_file.is_file():
            results.append(json.loads(status_file.read_text()))
        else:
            results.append({"status": "FAILED", "run_name": f"job {job_dir.name}", "reason": "no status (process died)"})
    return results


def format_summary(results: list[dict[str, Any]]) -> str:
    counts = Counter(r["status"] for r in results)
    lines = [f"Sweep summary: {len(results)} jobs: " + ", ".join(f"{counts[s]} {s.lower()}" for s in STATUSES)]
    for r in results:
        detail = f" ({r['reason']})" if r.get("reason") else ""
        lines.append(f"  {r['status']:<8} {r['run_name']}{detail}")
    if results and counts["SKIPPED"] == len(results):
        lines.append("Nothing to run: every job already has a FINISHED run (sweep.skip_finished=false re-runs them).")
    return "\n".join(lines)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_every_job(config: DictConfig) -> None:
    """Compose and check each job of the sweep as the launcher will, before any job starts.

    Hydra's basic sweeper composes the jobs of a batch before launching it, but
    the typed config's range checks and unknown keys only surface when each job
    converts its config, that is after the jobs before it have trained. Raises
    ``ConfigError`` (or Hydra's composition error) naming the key.
    """
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return  # another sweeper chooses its jobs as it goes
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job_overrides in batch:
            job = loader.load_sweep_config(config, list(job_overrides))
            values = {key: value for key, value in OmegaConf.to_container(job).items() if key != "hydra"}
            check_known_keys(values)
            OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), values))


class SweepCallback(Callback):
    """Parent MLflow run and end-of-sweep summary for ``-m`` runs."""

    def __init__(self) -> None:
        self.client: Optional[tracking.MlflowClient] = None
        self.parent_run_id: Optional[str] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking.resolve_tracking_uri(config.mlflow.tracking_uri, Path.cwd())
        # Hydra turns a callback's exception into a warning and goes on: exit here instead.
        try:
            check_every_job(config)
            tracking.check_reachable(uri)
        except (ConfigError, tracking.TrackingError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except (HydraException, OmegaConfBaseException) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            sys.exit(2)
        self.client = tracking.MlflowClient(uri)
        experiment_id = tracking.get_or_create_experiment(
            self.client, config.mlflow.experiment, tracking.default_artifact_location(uri)
        )
        for run_id in tracking.close_orphaned_runs(self.client, experiment_id):
            print(f"run {run_id} was left RUNNING by a process that is gone; marked KILLED", file=sys.stderr)
        overrides = list(config.hydra.overrides.task)
        name = f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(overrides)}".strip()
        tags = {"sweep": "true", "hydra.sweep_dir": str(Path(config.hydra.sweep.dir).resolve())}
        self.parent_run_id = tracking.start_run(self.client, experiment_id, name, tags)
        tracking.log_params(self.client, self.parent_run_id, dict(o.split("=", 1) for o in overrides if "=" in o))
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps({"run_id": self.parent_run_id, "tracking_uri": uri}))
        # Ctrl-C or a launcher error skips on_multirun_end; the parent must not stay RUNNING.
        atexit.register(self._end_unfinished)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = read_job_statuses(Path(config.hydra.sweep.dir))
        summary = format_summary(results)
        print(summary, flush=True)
        counts = Counter(r["status"] for r in results)
        failed = counts["FAILED"] + counts["KILLED"]
        if self.client is not None and self.parent_run_id is not None:
            tracking.log_metrics(self.client, self.parent_run_id, 0, {f"jobs_{s.lower()}": counts[s] for s in STATUSES})
            tracking.set_tags(self.client, self.parent_run_id, {f"jobs_{s.lower()}": counts[s] for s in STATUSES})
            self.client.log_text(self.parent_run_id, summary + "\n", "sweep_summary.txt")
            self._log_report(Path(config.hydra.sweep.dir) / "report", results)
            tracking.end_run(self.client, self.parent_run_id, "FAILED" if failed else "FINISHED",
                             f"{failed} of {len(results)} jobs failed" if failed else None)
            self.parent_run_id = None
        if failed:
            sys.exit(1)

    def _log_report(self, out_dir: Path, results: list[dict[str, Any]]) -> None:
        """The sweep's report (table, learning curves, report.md) into ``out_dir`` and the parent's ``report/``."""
        run_ids = [r["run_id"] for r in results if r.get("run_id")]  # skipped jobs point at their earlier run
        if not run_ids:
            return
        from lenet_sweep.report import ReportError, build_report, run_ids_filter

        try:
            experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
            report = build_report(self.client, experiment_id, out_dir, filter_string=run_ids_filter(run_ids))
            self.client.log_artifacts(self.parent_run_id, str(out_dir), "report")
        except ReportError as error:  # e.g. every job failed: nothing to compare
            print(f"no sweep report: {error}", file=sys.stderr)
            return
        except Exception as error:  # the report must not keep the parent from closing
            print(f"no sweep report: {type(error).__name__}: {error}", file=sys.stderr)
            return
        print(f"{report.markdown_table}\nreport: {out_dir / 'report.md'}", flush=True)

    def _end_unfinished(self) -> None:
        if self.client is not None and self.parent_run_id is not None:
            tracking.end_run(self.client, self.parent_run_id, "KILLED", "sweep interrupted before it completed")
            self.parent_run_id = None
