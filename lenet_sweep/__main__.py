"""CLI entry: ``python -m lenet_sweep [-m] key=value ...``.

Hydra composes ``conf/``; this module turns the composed config into the typed
``Config`` and Hydra's runtime facts into a ``JobContext``, then hands both to
``job.run_job``. Input errors end the job with one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_sweep import hydra_internals, identity, ownership
from lenet_sweep.config import Config, ConfigError, check_known_keys, one_line, register_configs
from lenet_sweep.data import DataError
from lenet_sweep.job import JobContext, load_job_dataset, run_job
from lenet_sweep.plan import PlannedJob, print_plan
from lenet_sweep.results import JobKilled, JobResult, ParentRun
from lenet_sweep.signals import Requeued, Terminated, signals_as_interrupts
from lenet_sweep.store import TrackingError, resolve_tracking_uri

log = logging.getLogger("lenet_sweep")
INPUT_ERRORS = (ConfigError, DataError, TrackingError)

register_configs()


def _parallel_jobs(hydra_cfg) -> int:
    """How many jobs share this machine's cores, from the launcher's settings."""
    launcher = hydra_cfg.launcher
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs is None:
        return 1
    cores = len(os.sched_getaffinity(0))
    return cores if n_jobs < 0 else n_jobs


def job_context() -> JobContext:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve() if multirun else None
    return JobContext(
        start_dir=Path(hydra_cfg.runtime.cwd),
        output_dir=Path(hydra_cfg.runtime.output_dir),
        overrides=tuple(hydra_cfg.overrides.task),
        sweep_dir=sweep_dir,
        job_num=hydra_cfg.job.num if multirun else None,
        parallel_jobs=_parallel_jobs(hydra_cfg) if multirun else 1,
        parent=ParentRun.read(sweep_dir),
    )


def config_dir() -> str:
    """``conf/``: inside the package in a wheel install, at the top of the repository in a checkout."""
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return str(packaged if packaged.is_dir() else package.parent / "conf")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(dict_cfg: DictConfig) -> float | None:
    ctx = job_context()
    multirun = ctx.sweep_dir is not None
    try:
        with signals_as_interrupts():
            check_known_keys(OmegaConf.to_container(dict_cfg))
            cfg: Config = OmegaConf.to_object(dict_cfg)
            if cfg.sweep.plan and not multirun:  # a multirun's plan is printed before any job starts
                job = dataclasses.replace(
                    PlannedJob.of(cfg, ctx.overrides), data_digest=load_job_dataset(cfg, ctx.start_dir).digest
                )
                sys.exit(
                    print_plan(
                        resolve_tracking_uri(cfg.mlflow.tracking_uri, ctx.start_dir),
                        cfg.mlflow.experiment,
                        [job],
                        cfg.sweep.orphan_after_minutes,
                    )
                )
            result = run_job(cfg, ctx)
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        result = JobResult("FAILED", _safe_name(dict_cfg, ctx.overrides), reason=str(error))
    except KeyboardInterrupt as error:
        # Ctrl-C, SIGTERM or lost ownership: the job's status says KILLED (with its run, if it had one).
        killed = error if isinstance(error, JobKilled) else None
        interrupt = killed.interrupt if killed else error
        result = (
            killed.result
            if killed
            else JobResult(
                "KILLED", _safe_name(dict_cfg, ctx.overrides), reason=f"interrupted: {interrupt or 'Ctrl-C'}"
            )
        )
        result.write(ctx.output_dir)
        if isinstance(interrupt, Requeued):
            raise SystemExit(-1) from None  # leave no result behind: the launcher waits for the requeued job
        if not multirun or (ctx.parent is not None and ctx.parent.launcher == ownership.owner_token()):
            raise interrupt from None  # stop here: the sweep in this process ends, and its summary says what ran
        return None  # a launcher's worker: report back, so the sweep's summary counts the job KILLED
    except Exception as error:
        if not multirun:
            raise
        # One failed job must not stop the sweep: record it, let the others run.
        log.exception("job %s failed", _safe_name(dict_cfg, ctx.overrides))
        result = JobResult("FAILED", _safe_name(dict_cfg, ctx.overrides), reason=f"{type(error).__name__}: {error}")
    result.write(ctx.output_dir)
    return result.test_acc


def _safe_name(dict_cfg: DictConfig, overrides: tuple[str, ...]) -> str:
    try:
        return identity.run_name(OmegaConf.to_object(dict_cfg), overrides)
    except Exception:
        return "invalid-config"


def plain_experiment(arg: str) -> str:
    """``+experiment=X`` as ``experiment=X``, so both spellings choose a preset.

    ``experiment`` has a null default in conf/config.yaml (``experiment=X`` works as typed); Hydra
    refuses to append a group that is already in the defaults list ("Multiple values for experiment").
    """
    return arg.removeprefix("+") if arg.startswith("+experiment=") else arg


def cli() -> None:
    """Run the Hydra app; a bad override or config group choice exits 2 with one line on stderr."""
    # Let composition errors reach us instead of Hydra's multi-line report.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv[1:] = [plain_experiment(arg) for arg in sys.argv[1:]]
    try:
        main()
    except ownership.OwnershipLost as lost:
        print(f"stopped: {lost}", file=sys.stderr)
        sys.exit(1)
    except Terminated as interrupt:
        print(f"stopped: {interrupt}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("stopped: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as error:
        if not hydra_internals.is_usage_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
