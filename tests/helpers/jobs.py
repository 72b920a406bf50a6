"""Run jobs in the test's own process (``job.run_job``), against a SQLite store in a temporary directory.

Faster than the CLI, and exact: a test interrupts a job at a chosen epoch through
the job's epoch hook instead of racing a signal against the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lenet_sweep.config import Config, register_configs
from lenet_sweep.job import JobContext, run_job
from lenet_sweep.results import JobResult
from lenet_sweep.train import EpochMetrics
from tests.helpers.cli import DATA, REPO

# Small, class-balanced subsets on one thread: a job takes a second or two.
TINY = [f"data.root={DATA}", "data.train_limit=600", "data.test_limit=200", "train.threads=1"]


def compose_config(*overrides: str) -> Config:
    """The typed config the CLI would build from ``overrides``."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def job_context(workdir: Path, overrides, epoch_hook: Callable[[EpochMetrics], None] | None = None) -> JobContext:
    output_dir = workdir / "outputs" / "runs" / str(abs(hash(overrides)))
    output_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(workdir, output_dir, tuple(overrides), epoch_hook=epoch_hook)


def run_in_process(workdir: Path, *overrides: str, epoch_hook=None) -> JobResult:
    """``python -m lenet_sweep <overrides>`` as one job in this process, its store under ``workdir``."""
    return run_job(compose_config(*overrides), job_context(workdir, overrides, epoch_hook))


def die_after_epoch(epoch: int) -> Callable[[EpochMetrics], None]:
    """An epoch hook that ends the process at once after ``epoch`` (as SIGKILL would: nothing is closed)."""

    def hook(metrics: EpochMetrics) -> None:
        if metrics.epoch == epoch:
            os._exit(137)

    return hook


def run_and_die_after_epoch(workdir: Path, overrides: tuple[str, ...], epoch: int) -> None:
    """For a child process: the job of ``overrides``, its process ended right after ``epoch``."""
    run_in_process(workdir, *overrides, epoch_hook=die_after_epoch(epoch))
