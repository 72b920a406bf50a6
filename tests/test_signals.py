"""Signals as exceptions, and the submitit behaviour the SLURM requeue relies on (submitit's real handler).

submitit's USR2 handler requeues the job (``scontrol requeue``) and exits on rank 0, and returns without
doing anything on other ranks (``tasks_per_node`` > 1). Our wrapper ignores SIGTERM while that handler
runs, since ``scontrol requeue`` stops the job with one, and must restore it on every other way out.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import submitit
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment

from lenet_sweep.signals import Requeued, Terminated, held, raise_terminated, signals_as_interrupts


def checkpointable_job() -> None:
    """What submitit runs; ``checkpoint`` makes it requeue on preemption or time-out, as Hydra's does."""


checkpointable_job.checkpoint = lambda *args, **kwargs: DelayedSubmission(checkpointable_job)


@pytest.fixture
def slurm_task(tmp_path, monkeypatch):
    """The environment of a SLURM job's task, with ``scontrol`` a script that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node1")
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "jobs").mkdir()  # where submitit pickles the checkpointed job for its requeued run
    delayed = DelayedSubmission(checkpointable_job)
    delayed._timeout_min, delayed._timeout_countdown = 60, 3
    handler = SignalHandler(SlurmJobEnvironment(), JobPaths(tmp_path / "jobs", job_id="4242"), delayed)
    previous_usr2 = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        yield tmp_path / "scontrol.args"
    finally:
        signal.signal(signal.SIGUSR2, previous_usr2)


def test_submitit_version_pinned():
    assert submitit.__version__.startswith("1."), f"submitit {submitit.__version__}: re-check the tests below"


def test_on_a_rank_other_than_0_usr2_does_nothing_and_sigterm_is_ours_again(slurm_task, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "1")
    with signals_as_interrupts():
        signal.raise_signal(signal.SIGUSR2)  # submitit's handler returns: this task neither requeues nor exits
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)  # a later scancel still ends the run KILLED
    assert not slurm_task.exists(), "a task of rank 1 must not requeue the job"


def test_on_rank_0_usr2_requeues_the_job_and_ends_the_task(slurm_task, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "0")
    with signals_as_interrupts():
        with pytest.raises(Requeued):
            signal.raise_signal(signal.SIGUSR2)
        # The requeue's own SIGTERM must not turn into a cancel while the task ends.
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert Path(slurm_task).read_text().split() == ["requeue", "4242"]


def test_held_signals_wait_for_the_end_of_the_block_and_are_raised_once_after_it():
    finished_block = False
    with signals_as_interrupts(), pytest.raises(Terminated):
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # both delivered here, neither raised
            finished_block = True
    assert finished_block
    assert signal.getsignal(signal.SIGTERM) is not raise_terminated  # signals_as_interrupts restored its own


def test_held_in_another_thread_leaves_the_handlers_alone():
    handlers = []

    def in_thread():
        with held():
            handlers.append(signal.getsignal(signal.SIGTERM))

    with signals_as_interrupts():
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        assert handlers == [raise_terminated]
