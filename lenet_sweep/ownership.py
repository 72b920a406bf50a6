"""Who owns a RUNNING run, how its owner shows it is alive, and how a dead owner's run changes hands.

An owner is one process, named so that a reused process id cannot pass for it:
host, boot, pid and the process's start time (``owner_token``). While it trains,
its ``Heartbeat`` stamps the run; a run whose owner is gone (dead or reused pid
on its host, a SLURM job the scheduler no longer knows, or a heartbeat older
than the orphan window from anywhere) is an orphan. An owner whose heartbeat
has failed for half that window stops itself, so nobody takes a run over while
its owner still trains. Taking a run over (``claim``) is first-writer-wins on a
param no store lets change, so two launchers racing for one orphan cannot both
resume it.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lenet_sweep.store import Run, Store

log = logging.getLogger(__name__)

HOST_TAG = "host"
PID_TAG = "pid"
OWNER_TAG = "owner"  # owner_token() of the process that owns the run now
GENERATION_TAG = "owner_generation"  # how often the run changed hands; claim N logs param owner.N
CLAIM_PARAM = "owner.{}"
SLURM_JOB_TAG = "slurm_job_id"
HEARTBEAT_TAG = "heartbeat"
DEFAULT_ORPHAN_AFTER_SECONDS = 600.0
RESUMABLE = ("FAILED", "KILLED")


class OwnershipLost(KeyboardInterrupt):
    """This process may no longer write to its run: its heartbeat failed too long, or another process claimed it."""


class ClaimLost(RuntimeError):
    """Another process claimed the run first, or it is no longer free to claim."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def process_start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@cache
def owner_token() -> str:
    """``host/boot/pid/start``: this process, distinguishable from a later one that reuses its pid."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{process_start_ticks(pid) or ''}"


def owner_tags() -> dict[str, str]:
    """Host, pid, owner token, SLURM job and a first heartbeat, recorded on every run a process starts or resumes."""
    tags = {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        OWNER_TAG: owner_token(),
        HEARTBEAT_TAG: f"{time.time():.0f}",
    }
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


def _dead_on_this_host(tags: Mapping[str, str]) -> str | None:
    """Why the owner recorded in ``tags`` is gone, when it ran on this host and this boot; else None."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG, "")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    token = tags.get(OWNER_TAG, "")
    parts = token.split("/")
    if len(parts) == 4 and parts[1] and parts[1] != _boot_id():
        return f"its host {host} rebooted since"
    if not _process_alive(int(pid)):
        return f"its process {pid} on {host} ended without closing it"
    started = parts[3] if len(parts) == 4 else ""
    if started and process_start_ticks(int(pid)) not in (None, started):
        return f"its process {pid} on {host} ended without closing it (the pid now belongs to another process)"
    return None


def orphan_reason(tags: Mapping[str, str], stale_after_seconds: float, now: float | None = None) -> str | None:
    """Why a RUNNING run with these tags has no live owner, or None when it may still have one.

    On the owner's host a dead process, or a live one that is not the owner (a
    reused pid), marks it orphaned at once. From any host, a SLURM job that the
    scheduler no longer knows, or a heartbeat older than ``stale_after_seconds``,
    does: a live owner whose heartbeat failed that long has stopped itself.
    """
    if tags.get(OWNER_TAG) == owner_token():
        return None
    dead = _dead_on_this_host(tags)
    if dead:
        return dead
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG, "")
    slurm_job = tags.get(SLURM_JOB_TAG)
    if slurm_job and _slurm_job_gone(slurm_job):
        return f"its SLURM job {slurm_job} on {host} is no longer running"
    heartbeat = tags.get(HEARTBEAT_TAG, "")
    age_seconds = (now or time.time()) - float(heartbeat) if heartbeat else None
    if age_seconds is not None and age_seconds > stale_after_seconds:
        return f"its owner on {host} (pid {pid}) has been silent for {age_seconds / 60:.0f} min"
    return None


def claim(store: Store, run_id: str, stale_after_seconds: float, claimable: tuple[str, ...] = RESUMABLE) -> Run:
    """Make this process the owner of ``run_id`` (ended ``claimable``, or RUNNING without a live owner).

    Re-reads the run first, then logs param ``owner.N`` for the next generation N:
    only one process can log it, so of two racing for the run exactly one wins.
    Returns the run as claimed; ``ClaimLost`` when it is owned by a live process
    now, ended otherwise, or another process claimed it first.
    """
    run = store.get_run(run_id)
    tags = run.data.tags
    if run.info.status == "RUNNING" and tags.get(OWNER_TAG) != owner_token():
        if orphan_reason(tags, stale_after_seconds) is None:
            raise ClaimLost(f"run {run_id} is RUNNING under a live owner ({tags.get(OWNER_TAG) or tags.get(HOST_TAG)})")
    elif run.info.status not in (*claimable, "RUNNING"):
        raise ClaimLost(f"run {run_id} is {run.info.status}")
    generation = int(tags.get(GENERATION_TAG, "0")) + 1
    if not store.log_param_once(run_id, CLAIM_PARAM.format(generation), owner_token()):
        raise ClaimLost(f"run {run_id} was claimed by another process first")
    store.set_tags(run_id, {**owner_tags(), GENERATION_TAG: generation})
    return store.get_run(run_id)


@dataclass(frozen=True)
class Orphan:
    run_id: str
    reason: str


def close_orphaned_runs(store: Store, experiment_id: str, stale_after_seconds: float) -> list[Orphan]:
    """End as KILLED the experiment's RUNNING runs that no live process owns; each one closed, with why.

    A SIGKILLed process (out of memory, ``kill -9``, a lost node) cannot close
    its own run. Each is claimed before it is closed, so a run that another
    launcher resumed meanwhile is left alone. A closed job run stays resumable.
    """
    closed = []
    for run in store.running_runs(experiment_id):
        reason = orphan_reason(run.data.tags, stale_after_seconds)
        if not reason:
            continue
        try:
            claim(store, run.info.run_id, stale_after_seconds)
        except ClaimLost:
            continue
        store.end_run(run.info.run_id, "KILLED", reason)
        closed.append(Orphan(run.info.run_id, reason))
    return closed


def heartbeat_interval_seconds(stale_after_seconds: float) -> float:
    """A beat a minute, and at least six per orphan window, so half the window spans several beats."""
    return max(0.2, min(60.0, stale_after_seconds / 6))


def interrupt_main_thread() -> None:
    """Raise ``KeyboardInterrupt`` in the main thread, waking it from a blocking call where a handler exists."""
    if callable(signal.getsignal(signal.SIGINT)):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:  # SIGINT ignored (a launcher's worker): the main thread sees it at its next Python instruction
        _thread.interrupt_main()


class Heartbeat:
    """While open, stamps the run's heartbeat tag from a thread, and checks the run is still this process's.

    A run whose heartbeat is old has lost its owner wherever that ran
    (``orphan_reason``). When beats fail for half of ``stale_after_seconds``, or
    the run names another owner, ``lost_reason`` says why and ``on_lost`` runs
    once (by default: interrupt the main thread), before another launcher may
    take the run over.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        stale_after_seconds: float = DEFAULT_ORPHAN_AFTER_SECONDS,
        on_lost: Callable[[], None] = interrupt_main_thread,
    ) -> None:
        self.store, self.run_id, self.on_lost = store, run_id, on_lost
        self.stale_after_seconds = stale_after_seconds
        self.interval_seconds = heartbeat_interval_seconds(stale_after_seconds)
        self.lost_reason: str | None = None
        self.taken_over = False  # another process owns the run now: this one must not write to it at all
        self._last_success = time.monotonic()
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._beater = threading.Thread(target=self._beat_until_stopped, name="mlflow-heartbeat", daemon=True)
        self._watchdog = threading.Thread(target=self._watch_until_stopped, name="heartbeat-watchdog", daemon=True)

    def start(self) -> None:
        self.beat()
        self._beater.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        # The beater may be stuck in a request to a store that stopped answering: never wait on it for long.
        self._beater.join(timeout=self.interval_seconds)
        self._watchdog.join(timeout=self.interval_seconds)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def beat(self) -> None:
        """Stamp the heartbeat; ``lost_reason`` is set when the run names another owner now."""
        owner = self.store.get_run(self.run_id).data.tags.get(OWNER_TAG)
        if owner and owner != owner_token():
            self.taken_over = True
            self._lose(f"run {self.run_id} was taken over by {owner}")
            return
        self.store.set_tags(self.run_id, {HEARTBEAT_TAG: f"{time.time():.0f}"})
        self._last_success = time.monotonic()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_seconds) and not self.lost:
            try:
                self.beat()
            except Exception as error:  # a store hiccup: the watchdog decides when it has lasted too long
                self._last_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                log.warning("heartbeat of run %s failed: %s", self.run_id, self._last_error)

    def _watch_until_stopped(self) -> None:
        limit_seconds = self.stale_after_seconds / 2
        while not self._stop.wait(self.interval_seconds / 2) and not self.lost:
            silent_seconds = time.monotonic() - self._last_success
            if silent_seconds > limit_seconds:
                self._lose(
                    f"heartbeat failed for {silent_seconds:.0f} s of the {self.stale_after_seconds:.0f} s orphan window"
                    f" (last error: {self._last_error or 'no answer'}); stopped so that a relaunch can take it over"
                )

    def _lose(self, reason: str) -> None:
        if self.lost or self._stop.is_set():
            return
        self.lost_reason = reason
        log.error("run %s: %s", self.run_id, reason)
        self.on_lost()
