"""Signals as exceptions: SIGTERM (scancel, preemption, a launcher shutting down) and submitit's requeue.

Either way the job closes its run KILLED and says why, instead of dying with the
run left RUNNING.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, preemption, a launcher shutting down): the run ends KILLED."""


class Requeued(KeyboardInterrupt):
    """SLURM preempted the job or its time ran out, and submitit requeued it: it resumes from its checkpoint."""


def raise_terminated(signum, frame):
    """A SIGTERM handler: the signal becomes an exception, so runs are closed on the way out."""
    raise Terminated(f"received signal {signum}")


def requeue_handler(submitit_handler):
    """A SIGUSR2 handler around submitit's: ``Requeued`` when submitit requeued the job, else as submitit did.

    ``scontrol requeue`` stops this run of the job with SIGTERM: that is the requeue, not a cancel, so
    SIGTERM is ignored while submitit's handler runs, and restored on every way out of it except the
    requeue itself (on ranks other than 0 submitit's handler returns without requeueing).
    """

    def requeue(signum, frame):
        previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        requeued = False
        try:
            submitit_handler(signum, frame)
        except SystemExit:  # requeued: the process must end now, as submitit meant it to
            requeued = True
            raise Requeued("preempted or out of time; SLURM requeued the job, which resumes the run") from None
        finally:
            if not requeued:
                signal.signal(signal.SIGTERM, previous_term)

    return requeue


@contextmanager
def signals_as_interrupts():
    """Inside, SIGTERM raises ``Terminated``, and submitit's requeue on SIGUSR2 raises ``Requeued``.

    submitit's own USR2 handler (checkpoint, ``scontrol requeue``, exit) still does the requeueing.
    """
    previous_term = signal.signal(signal.SIGTERM, raise_terminated)
    previous_usr2 = signal.getsignal(signal.SIGUSR2)
    if callable(previous_usr2):
        signal.signal(signal.SIGUSR2, requeue_handler(previous_usr2))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if callable(previous_usr2):
            signal.signal(signal.SIGUSR2, previous_usr2)


@contextmanager
def held() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM wait: each that arrives is raised again, once, on the way out.

    For the calls that must not stop half-way: a database store's call interrupted inside its
    transaction can keep the database locked, and the run's last write (ending it KILLED) then
    waits on that lock until it gives up, leaving the run RUNNING. Only the main thread receives
    signals; in any other thread this holds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
