"""What a job will do with the tracking store's earlier runs: skip, resume, take over, or start anew.

The same decision serves the job itself (``job.run_job``) and the sweep's plan
(``sweep.plan=true``), so the plan says exactly what a launch would do, and why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lenet_sweep import identity, ownership, store
from lenet_sweep.config import Config
from lenet_sweep.ownership import RESUMABLE
from lenet_sweep.provenance import Provenance, code_of_run, code_version
from lenet_sweep.store import Run, Store

ACTIONS = ("skip", "new", "resume", "take over")


@dataclass(frozen=True)
class PlannedJob:
    """One job of a sweep as composed before anything runs."""

    name: str
    overrides: tuple[str, ...]
    fingerprint: str
    cfg: Config
    data_digest: str | None = None  # known once its data set was found and verified

    @classmethod
    def of(cls, cfg: Config, overrides: Sequence[str]) -> PlannedJob:
        fingerprint = identity.config_fingerprint(identity.flat_config(cfg))
        return cls(identity.run_name(cfg, overrides), tuple(overrides), fingerprint, cfg)

    def as_record(self) -> dict:
        """What the sweep's parent run lists of the job (``sweep_jobs.json``)."""
        return {
            "run_name": self.name,
            store.FINGERPRINT_TAG: self.fingerprint,
            "epochs": self.cfg.train.epochs,
            "overrides": list(self.overrides),
        }


@dataclass(frozen=True)
class Decision:
    """``action`` is one of ``ACTIONS``; ``run`` the earlier run it concerns; ``reason`` says why, for people."""

    action: str
    run: Run | None = None
    checkpoint: Path | None = None  # resume: the checkpoint to continue from
    reason: str = ""


def decide(
    runs: Store,
    experiment_id: str,
    fingerprint: str,
    skip_finished: str,
    resume: bool,
    provenance: Provenance,
    orphaned: frozenset[str] = frozenset(),
) -> Decision:
    """What to do for a job with this config ``fingerprint``, computed by ``provenance``'s code on its data.

    ``skip_finished``: ``config`` skips when a FINISHED run has the same config and
    data (saying so when its code differs), ``code`` only when its commit is also
    the same and both trees were clean, ``never`` never skips. ``resume`` continues
    a FAILED or KILLED run from its checkpoint, or takes over one that died
    before its first checkpoint; runs in ``orphaned`` count as KILLED (the plan
    reports what a launch, which closes them first, would do). Reads the store only.
    """
    if skip_finished != "never":
        for run in runs.runs_with_fingerprint(experiment_id, fingerprint, ["FINISHED"]):
            skip, reason = _reuse(run, skip_finished, provenance)
            if skip:
                return Decision("skip", run, reason=reason)
    if resume:
        candidates = [
            run
            for run in runs.runs_with_fingerprint(experiment_id, fingerprint, (*RESUMABLE, "RUNNING"))
            if (run.info.status != "RUNNING" or run.info.run_id in orphaned) and provenance.same_data_as(run)
        ]
        for run in candidates:
            checkpoint = run.data.tags.get(store.CHECKPOINT_TAG)
            if checkpoint and Path(checkpoint).is_file():
                return Decision("resume", run, Path(checkpoint), _ended(run))
        for run in candidates:
            if not run.data.metrics:
                return Decision("take over", run, reason=f"{_ended(run)} before its first epoch")
    return Decision("new")


def _ended(run: Run) -> str:
    return "left RUNNING by a process that is gone" if run.info.status == "RUNNING" else run.info.status


def _reuse(run: Run, skip_finished: str, provenance: Provenance) -> tuple[bool, str]:
    """Whether the FINISHED ``run`` stands for this job, and the reason either way."""
    if not provenance.same_data_as(run):
        return False, "other data"
    if run.data.tags.get(store.TRIAL_STATE_TAG) == "PRUNED":
        return False, "a search pruned it before its last epoch"
    theirs = code_of_run(run)
    if theirs == provenance.code and provenance.code.clean:
        return True, "same config, same data, same code"
    if skip_finished == "code":
        return False, f"other code: {theirs.describe()} then, {provenance.code.describe()} now"
    if theirs == provenance.code:
        return True, f"same config, same data; both from the modified tree {theirs.describe()}"
    return True, f"same config, same data; code differs: {theirs.describe()} then, {provenance.code.describe()} now"


def describe(name: str, decision: Decision, total_epochs: int, runs: Store | None = None, name_width: int = 0) -> str:
    """One line of the plan: ``lenet·none·sgd·s0  skip  run 1f3c… FINISHED 2026-11-28 (same config, same data)``."""
    line = f"{name:<{name_width}}  {decision.action:<9}"
    run = decision.run
    if run is None:
        return line.rstrip()
    run_ref = f"run {run.info.run_id[:8]}…"
    if decision.action == "skip":
        day = time.strftime("%Y-%m-%d", time.localtime(run.info.start_time / 1000))
        return f"{line} {run_ref} FINISHED {day} ({decision.reason})"
    if decision.action == "resume":
        done = _epochs_logged(runs, run) if runs is not None else 0
        if done >= total_epochs:  # killed between its last checkpoint and the run's end
            return f"{line} {run_ref} all {total_epochs} epochs done: only ends the run ({decision.reason})"
        return f"{line} {run_ref} from epoch {done + 1} of {total_epochs} ({decision.reason})"
    return f"{line} {run_ref} from epoch 1 ({decision.reason})"


def _epochs_logged(runs: Store, run: Run) -> int:
    steps = [m.step for m in runs.metric_history(run.info.run_id, "test_acc")]
    return max(steps, default=0)


def count_line(decisions: Sequence[Decision]) -> str:
    """``3 jobs: 1 skip, 1 new, 1 resume`` (actions that occur, in ``ACTIONS`` order)."""
    counts = Counter(d.action for d in decisions)
    parts = [f"{counts[action]} {action}" for action in ACTIONS if counts[action]]
    return f"{len(decisions)} jobs: " + ", ".join(parts)


def print_plan(
    tracking_uri: str, experiment: str, jobs: Sequence[PlannedJob] | None, orphan_after_minutes: float
) -> int:
    """Print what a launch would do with each job, and a count line; read the store only. The exit code."""
    if jobs is None:
        print("no plan: this sweeper chooses its jobs as it runs")
        return 0
    runs, experiment_id = _open_read_only(tracking_uri, experiment)
    orphaned: frozenset[str] = frozenset()
    if experiment_id is not None:
        orphaned = frozenset(
            r.info.run_id
            for r in runs.running_runs(experiment_id)
            if ownership.orphan_reason(r.data.tags, orphan_after_minutes * 60)
        )
    code = code_version()
    name_width = max((len(job.name) for job in jobs), default=0)
    decisions = []
    for job in jobs:
        provenance = Provenance(code, data_digest=job.data_digest)
        decision = (
            Decision("new")
            if experiment_id is None
            else decide(
                runs,
                experiment_id,
                job.fingerprint,
                job.cfg.sweep.skip_finished,
                job.cfg.sweep.resume,
                provenance,
                orphaned,
            )
        )
        decisions.append(decision)
        print(describe(job.name, decision, job.cfg.train.epochs, runs, name_width))
    print(count_line(decisions))
    return 0


def _open_read_only(tracking_uri: str, experiment: str) -> tuple[Store | None, str | None]:
    """The store and the experiment's id, or (None, None) where nothing was logged yet; creates nothing."""
    if not store.store_exists(tracking_uri):
        return None, None
    runs = Store(tracking_uri)
    return runs, runs.experiment_id(experiment)
