"""An Optuna study as the sweeper keeps it: settings, storage, sampler, pruner, name, and its trials' counts.

The study's storage outlives every process: a relaunch of the same command
reopens it and continues up to ``n_trials`` in total. The settings that give
trial values their meaning (metric, objective, direction) and the pruner are
stored on the study itself, so a job on another host can rebuild the pruner
from the storage alone, and a relaunch with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from lenet_sweep.config import ConfigError

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("none", "median", "hyperband")
OBJECTIVES = ("best", "final")
DIRECTIONS = ("maximize", "minimize")
METRICS = ("val_acc", "val_loss")
DEFAULT_STORAGE = Path("outputs") / "optuna.db"
JOURNAL_PREFIX = "journal:"
# What the study remembers of its settings (study user attributes).
STUDY_SETTINGS = ("metric", "objective", "direction")
# A trial whose process died (killed, preempted) is marked FAIL and its parameters are enqueued
# again as a trial with this user attribute (the number it retries): the died one does not count.
RETRY_OF_ATTR = "retry_of"
SWEEP_RUN_ATTR = "sweep_run_id"  # the MLflow parent run of the launch that asked the trial
RUN_ID_ATTR = "mlflow_run_id"
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper says what happens in its own words
log = logging.getLogger(__name__)


class StudyError(ConfigError):
    """The study cannot be opened or used as configured; the message names the setting or the storage."""


@dataclass(frozen=True)
class SearchSettings:
    """``hydra.sweeper``'s settings, checked (``check``); plain values for the library code."""

    n_trials: int = 20
    n_jobs: int = 1
    direction: str | None = None  # None: maximize an accuracy, minimize a loss
    metric: str = "val_acc"
    objective: str = "best"
    sampler: str = "tpe"
    seed: int | None = None
    pruner: str = "none"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    study_name: str | None = None
    storage: str | None = None

    def check(self, val_size: int) -> None:
        """``ConfigError`` naming the first bad setting; ``val_size`` is the jobs' ``data.val_size``."""
        _one_of("sampler", self.sampler, SAMPLERS)
        _one_of("pruner", self.pruner, PRUNERS)
        _one_of("objective", self.objective, OBJECTIVES)
        if self.direction is not None:
            _one_of("direction", self.direction, DIRECTIONS)
        if self.metric.startswith("test_"):
            raise ConfigError(
                f"hydra.sweeper.metric={self.metric}: the search optimises validation metrics only "
                "(val_acc, val_loss); the test set is for the comparison after it"
            )
        _one_of("metric", self.metric, METRICS)
        if val_size == 0:
            raise ConfigError(f"hydra.sweeper.metric={self.metric} needs a validation split: set data.val_size")
        for key in ("n_trials", "n_jobs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"hydra.sweeper.{key}={getattr(self, key)}: must be a positive integer")
        for key in ("pruner_startup_trials", "pruner_warmup_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"hydra.sweeper.{key}={getattr(self, key)}: must be >= 0")

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize" if self.direction else not self.metric.endswith("_loss")

    def stored(self) -> dict[str, str]:
        """What the study keeps of these settings (``STUDY_SETTINGS``) and of its pruner."""
        return {
            "metric": self.metric,
            "objective": self.objective,
            "direction": "maximize" if self.maximize else "minimize",
            "pruner": json.dumps(
                [self.pruner, self.pruner_startup_trials, self.pruner_warmup_epochs],
            ),
        }


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"hydra.sweeper.{key}={value}: must be one of {', '.join(allowed)}")


def resolve_storage_url(configured: str | None, start_dir: Path) -> str:
    """``configured``, its relative file paths made absolute (jobs may run elsewhere); by default
    ``sqlite:///<start dir>/outputs/optuna.db``."""
    if not configured:
        return "sqlite:///" + str((start_dir / DEFAULT_STORAGE).resolve())
    if configured.startswith(JOURNAL_PREFIX):
        return JOURNAL_PREFIX + str((start_dir / configured.removeprefix(JOURNAL_PREFIX)).resolve())
    if configured.startswith("sqlite:///") and not configured.startswith("sqlite:////"):
        return "sqlite:///" + str((start_dir / configured.removeprefix("sqlite:///")).resolve())
    return configured


def open_storage(url: str, create: bool = True) -> BaseStorage | None:
    """The Optuna storage at ``url``: any SQLAlchemy URL, or ``journal:<file>`` (Optuna's journal file,
    for clusters without a database server). ``StudyError`` naming the URL when it cannot be used.

    With ``create=False`` a storage that does not exist yet is not created: None.
    """
    path = _file_of(url)
    if path is not None and not create and not path.exists():
        return None
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if url.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(path)))
        # An SQLite file shared by parallel jobs: wait for a writer rather than fail at once.
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        storage.get_all_studies()  # connects: an unreachable server fails here, not in the first trial
        return storage
    except Exception as error:  # a driver missing, a server down, a bad URL: one line, before any trial
        reason = " ".join(str(error).split("\n")[0].split())
        raise StudyError(f"Optuna storage {url} cannot be used: {type(error).__name__}: {reason}") from None


def _file_of(url: str) -> Path | None:
    if url.startswith(JOURNAL_PREFIX):
        return Path(url.removeprefix(JOURNAL_PREFIX))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def default_study_name(fixed: list[str], space_description: list[str]) -> str:
    """A readable name, unique to the fixed overrides and the space: ``model=lenet·3f2a9c1b``."""
    digest = hashlib.sha256(json.dumps([sorted(fixed), sorted(space_description)]).encode()).hexdigest()[:8]
    readable = "·".join(o for o in fixed if len(o) <= 40)[:200]
    return f"{readable}·{digest}" if readable else f"search·{digest}"


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":  # CMA-ES samples float and int keys; Optuna samples categorical ones at random
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # constant_liar: trials running in parallel are not all sampled at the same point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(stored: str | None) -> optuna.pruners.BasePruner:
    """The pruner a study stored (``SearchSettings.stored``'s ``pruner``); Optuna's NopPruner for none."""
    name, startup_trials, warmup_epochs = json.loads(stored) if stored else ("none", 0, 0)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs))
    return optuna.pruners.NopPruner()


def open_study(settings: SearchSettings, name: str, storage: BaseStorage) -> optuna.Study:
    """Create study ``name`` or reopen it; ``StudyError`` when it exists with another metric, objective or direction."""
    stored = settings.stored()
    existing = load_existing_study(name, storage)
    # A relaunch seeded as the first launch would draw the first launch's points again: each launch's
    # sampler is seeded with the seed plus the trials the study already holds, reproducible and new.
    seed = None if settings.seed is None else settings.seed + (len(existing.trials) if existing else 0)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=stored["direction"],
        sampler=make_sampler(settings.sampler, seed),
        pruner=make_pruner(stored["pruner"]),
        load_if_exists=True,
    )
    check_same_settings(study.user_attrs, stored, name)
    for key, value in stored.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def check_same_settings(existing: dict[str, Any], stored: dict[str, str], name: str) -> None:
    """``StudyError`` when study ``name`` already holds trial values of another metric, objective or direction."""
    for key in STUDY_SETTINGS:
        if key in existing and existing[key] != stored[key]:
            raise StudyError(
                f"hydra.sweeper.{key}={stored[key]}: study '{name}' has {key}={existing[key]}; "
                "set hydra.sweeper.study_name to start another study"
            )


def load_existing_study(name: str, storage: BaseStorage | None) -> optuna.Study | None:
    """Study ``name`` if the storage holds it, without creating anything."""
    if storage is None:
        return None
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that died and were enqueued again (``RETRY_OF_ATTR``)."""
    return {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards ``n_trials``: all but those that died and were tried again."""
    again = retried(trials)
    return [t for t in trials if t.state in COUNTED_STATES and t.number not in again]


def trial_counts(trials: list[FrozenTrial]) -> Counter:
    """How many counted trials are complete, pruned, fail(ed), running and waiting; and how many died (retried)."""
    counts = Counter(t.state.name.lower() for t in counted(trials))
    counts["died"] = len(retried(trials))
    return counts


def remaining_trials(n_trials: int, trials: list[FrozenTrial]) -> int:
    """Trials still to ask for a study total of ``n_trials``."""
    return max(0, n_trials - len(counted(trials)))
