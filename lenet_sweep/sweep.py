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
import dataclasses
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_sweep import hydra_internals, identity, ownership, store
from lenet_sweep.config import ConfigError, job_config, one_line
from lenet_sweep.data import DataError
from lenet_sweep.job import load_job_dataset
from lenet_sweep.ownership import RESUMABLE
from lenet_sweep.plan import PlannedJob, print_plan
from lenet_sweep.results import STATUSES, JobResult, ParentRun
from lenet_sweep.signals import raise_terminated
from lenet_sweep.store import Store, StoreRefused

# The sweepers that launch the grid of their params and the command line, as Hydra's basic sweeper does.
GRID_SWEEPERS = (hydra_internals.GRID_SWEEPER, hydra_internals.BASIC_SWEEPER)
LAUNCHES_TAG = "launches"  # how often the sweep was launched; the parent's job counts are logged at that step
# Each job's config as compose_every_job composed it, by the job's overrides, with the sweep's config it was
# composed from: a launcher in this process takes it instead of composing the job once more.
_composed_jobs: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}


def _job_order(job_dir: Path):
    return (0, int(job_dir.name), "") if job_dir.name.isdigit() else (1, 0, job_dir.name)


def read_job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job directory of the sweep; a job that died without a status file counts as FAILED."""
    results = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_order):
        result = JobResult.read(job_dir) or JobResult(
            "FAILED", f"job {job_dir.name}", reason="no status (process died)"
        )
        results.append(asdict(result))
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


def sweep_job_overrides(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job of the sweep, in launch order (job 0 first), as Hydra's basic sweeper
    will launch them; ``None`` under another sweeper, which chooses its jobs as it goes.

    ``config`` is the sweep's config with its ``hydra`` node (as a multirun callback receives it).
    Uses Hydra's private ``split_arguments`` (``hydra_internals``).
    """
    if config.hydra.sweeper.get("_target_") not in GRID_SWEEPERS:
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return hydra_internals.split_arguments(parser.parse_overrides(params + list(config.hydra.overrides.task)))


def compose_every_job(config: DictConfig) -> list[PlannedJob] | None:
    """Compose and check each job of the sweep as the launcher will, before any job starts.

    Hydra's basic sweeper composes the jobs of a batch before launching it, but
    the typed config's range checks and unknown keys only surface when each job
    converts its config, that is after the jobs before it have trained. Raises
    ``ConfigError`` (or Hydra's composition error) naming the key. ``None``
    under another sweeper, which chooses its jobs as it goes.
    """
    jobs = sweep_job_overrides(config)
    if jobs is None:
        return None
    loader = GlobalHydra.instance().config_loader()
    planned = []
    _composed_jobs.clear()
    for job_overrides in jobs:
        job = loader.load_sweep_config(config, job_overrides)
        _composed_jobs[tuple(job_overrides)] = (config, job)
        cfg = job_config(job)
        planned.append(PlannedJob.of(cfg, tuple(job_overrides)))
    return planned


def was_composed(config: DictConfig, job_overrides: Sequence[str]) -> bool:
    """Whether ``compose_every_job`` composed and checked this job of the sweep ``config`` (and no launcher took it)."""
    found = _composed_jobs.get(tuple(job_overrides))
    return found is not None and found[0] is config


def take_composed_job(config: DictConfig, job_overrides: Sequence[str]) -> DictConfig | None:
    """The job's config as Hydra's ``load_sweep_config(config, job_overrides)`` returns it, composed already by
    ``compose_every_job`` from the same sweep ``config``; None when it was not (then compose it). Each is taken once.
    """
    if not was_composed(config, job_overrides):
        return None
    job = _composed_jobs.pop(tuple(job_overrides))[1]
    # As load_sweep_config does: resolvers' cached values (the sweep's ${now:...}) are the sweep config's.
    OmegaConf.copy_cache(from_config=config, to_config=job)
    return job


def with_verified_data(jobs: list[PlannedJob], start_dir: Path) -> list[PlannedJob]:
    """``jobs`` with their data sets' digests; each data set is found and verified once, before anything runs.

    ``DataError`` (one line: where it looked, how to get it) when one is missing or damaged. Jobs
    launched in this process find the data already loaded.
    """
    return [dataclasses.replace(job, data_digest=load_job_dataset(job.cfg, start_dir).digest) for job in jobs]


class SweepError(RuntimeError):
    """The sweep cannot start; the message says why."""


def open_parent_run(runs: Store, experiment_id: str, config: DictConfig) -> str:
    """The sweep's parent run, RUNNING: the one an earlier launch of the same sweep left, or a new one.

    A sweep is its overrides and sweeper params (``identity.sweep_fingerprint``),
    so a relaunch gathers every job, skipped, resumed or new, under one parent.
    """
    overrides = list(config.hydra.overrides.task)
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    fingerprint = identity.sweep_fingerprint(overrides, params)
    sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
    parent = runs.newest_run(experiment_id, f"tags.{store.SWEEP_FINGERPRINT_TAG} = '{fingerprint}'")
    if parent is not None:
        if parent.info.status == "RUNNING":
            tags = parent.data.tags
            raise SweepError(
                f"this sweep is already running: parent run {parent.info.run_id} on "
                f"{tags.get(ownership.HOST_TAG)} (pid {tags.get(ownership.PID_TAG)})"
            )
        try:
            ownership.claim(
                runs, parent.info.run_id, float(config.sweep.orphan_after_minutes) * 60, ("FINISHED", *RESUMABLE)
            )
        except ownership.ClaimLost as lost:
            raise SweepError(f"this sweep was relaunched by another process at the same time: {lost}") from None
        launches = int(parent.data.tags.get(LAUNCHES_TAG, "1")) + 1
        runs.set_tags(parent.info.run_id, {"hydra.sweep_dir": sweep_dir, LAUNCHES_TAG: launches})
        runs.reopen_run(parent.info.run_id)
        print(f"relaunch {launches} of sweep {parent.info.run_id} ({parent.info.run_name})", file=sys.stderr)
        return parent.info.run_id
    name = f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(overrides)}".strip()
    tags = {
        "sweep": "true",
        "hydra.sweep_dir": sweep_dir,
        store.SWEEP_FINGERPRINT_TAG: fingerprint,
        LAUNCHES_TAG: "1",
    }
    run_id = runs.create_run(experiment_id, name, {**ownership.owner_tags(), **tags})
    try:  # MLflow's param names take no Hydra prefix (+study=mlp is logged as study)
        runs.log_params(run_id, dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o))
    except BaseException:
        runs.end_run(run_id, "FAILED", "could not log the sweep's overrides")
        raise
    return run_id


class SweepCallback(Callback):
    """Parent MLflow run and end-of-sweep summary for ``-m`` runs."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.parent_run_id: str | None = None
        self.sweep_dir: Path | None = None
        self.heartbeat: ownership.Heartbeat | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Launchers ship the callbacks to their workers; the parent run belongs to the launching process alone.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = store.resolve_tracking_uri(config.mlflow.tracking_uri, Path.cwd())
        stale_after_seconds = float(config.sweep.orphan_after_minutes) * 60
        # Hydra turns a callback's exception into a warning and goes on: exit here instead.
        try:
            jobs = compose_every_job(config)
            if jobs is not None:
                jobs = with_verified_data(jobs, Path.cwd())
            store.check_reachable(uri)
            if config.sweep.plan:  # what a launch would do, and nothing else: no run, not even the parent
                sys.exit(print_plan(uri, config.mlflow.experiment, jobs, config.sweep.orphan_after_minutes))
            self.store = Store(uri)
            experiment_id = self.store.get_or_create_experiment(
                config.mlflow.experiment, store.default_artifact_location(uri)
            )
            for orphan in ownership.close_orphaned_runs(self.store, experiment_id, stale_after_seconds):
                print(f"run {orphan.run_id} was left RUNNING ({orphan.reason}); marked KILLED", file=sys.stderr)
            self.parent_run_id = open_parent_run(self.store, experiment_id, config)
        except (ConfigError, DataError, store.TrackingError, SweepError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except (HydraException, OmegaConfBaseException) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            sys.exit(2)
        except StoreRefused as error:
            print(store.redact(f"error: MLflow store {uri}: {str(error).splitlines()[0]}"), file=sys.stderr)
            sys.exit(2)
        except Exception as error:  # a broken environment: without this exit the jobs would run untracked
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(store.redact(f"error: the sweep cannot start: {type(error).__name__}: {detail}"), file=sys.stderr)
            sys.exit(1)
        # From here on the parent must end, whatever happens: Ctrl-C, SIGTERM or a launcher error
        # skip on_multirun_end, so atexit closes it, with the summary of what ran.
        atexit.register(self._end_interrupted)
        signal.signal(signal.SIGTERM, raise_terminated)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.heartbeat = ownership.Heartbeat(self.store, self.parent_run_id, stale_after_seconds)
        self.heartbeat.start()
        if jobs is not None:  # what `python -m lenet_sweep.status` lists, started or not
            self.store.log_dict(self.parent_run_id, [job.as_record() for job in jobs], store.SWEEP_JOBS_ARTIFACT)
        ParentRun(self.parent_run_id, uri, ownership.owner_token()).write(self.sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self._end_parent(interrupted=False)
        if failed:
            sys.exit(1)

    def _end_parent(self, interrupted: bool) -> int:
        """Print and log the summary, close the parent; the number of jobs that failed or were killed."""
        if self.store is None or self.parent_run_id is None or self.sweep_dir is None:
            return 0
        results = read_job_statuses(self.sweep_dir)
        summary = format_summary(results)
        print(summary, flush=True)
        counts = Counter(r["status"] for r in results)
        failed = counts["FAILED"] + counts["KILLED"]
        if self.heartbeat is not None:
            self.heartbeat.stop()
        step = int(self.store.get_run(self.parent_run_id).data.tags.get(LAUNCHES_TAG, "1"))
        job_counts = {f"jobs_{s.lower()}": counts[s] for s in STATUSES}
        self.store.log_metrics(self.parent_run_id, step, job_counts)
        self.store.set_tags(self.parent_run_id, job_counts)
        self.store.log_text(self.parent_run_id, summary + "\n", "sweep_summary.txt")
        if not interrupted:
            self._log_report(self.sweep_dir / "report", results)
        if interrupted:
            status, reason = "KILLED", "sweep interrupted before it completed"
        else:
            status, reason = ("FAILED", f"{failed} of {len(results)} jobs failed") if failed else ("FINISHED", None)
        self.store.end_run(self.parent_run_id, status, reason)
        self.parent_run_id = None
        return failed

    def _log_report(self, out_dir: Path, results: list[dict[str, Any]]) -> None:
        """The sweep's report (table, learning curves, report.md) into ``out_dir`` and the parent's ``report/``."""
        run_ids = [r["run_id"] for r in results if r.get("run_id")]  # skipped jobs point at their earlier run
        if not run_ids:
            return
        from lenet_sweep.report import ReportError, build_report, run_ids_filter

        try:
            experiment_id = self.store.get_run(self.parent_run_id).info.experiment_id
            report = build_report(self.store, experiment_id, out_dir, filter_string=run_ids_filter(run_ids))
            self.store.log_artifacts(self.parent_run_id, out_dir, "report")
        except ReportError as error:  # e.g. every job failed: nothing to compare
            print(f"no sweep report: {error}", file=sys.stderr)
            return
        except Exception as error:  # the report must not keep the parent from closing
            print(f"no sweep report: {type(error).__name__}: {error}", file=sys.stderr)
            return
        print(f"{report.markdown_table}\nreport: {out_dir / 'report.md'}", flush=True)

    def _end_interrupted(self) -> None:
        self._end_parent(interrupted=True)
