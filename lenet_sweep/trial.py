"""The job's side of an Optuna trial: report each epoch's metric to the study, and stop when it is pruned.

The Optuna sweeper hands each trial's job the storage, the study and the trial
number as environment variables (through ``hydra.job.env_set``, which every
Hydra launcher applies where the job runs: in the launching process, a joblib
worker or a SLURM node). The job reopens the study through the storage, so
pruning decisions use every trial's reports, whichever process or host made them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import optuna

from lenet_sweep import store
from lenet_sweep.signals import held
from lenet_sweep.study import RUN_ID_ATTR, load_existing_study, make_pruner, open_storage
from lenet_sweep.uris import redact

STORAGE_ENV = "LENET_SWEEP_OPTUNA_STORAGE"
STUDY_ENV = "LENET_SWEEP_OPTUNA_STUDY"
TRIAL_ENV = "LENET_SWEEP_OPTUNA_TRIAL"
# Tags of a trial's MLflow run.
TRIAL_NUMBER_TAG = "trial_number"
STUDY_TAG = "study"
TRIAL_STATE_TAG = store.TRIAL_STATE_TAG


class TrialPruned(optuna.TrialPruned):
    """The study's pruner stopped the trial after ``epoch``: its run ends FINISHED, tagged ``trial_state=PRUNED``."""

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"pruned after epoch {epoch} ({value:.4f})")
        self.epoch = epoch


def trial_env(study_name: str, number: int) -> dict[str, str]:
    """The environment variables (``hydra.job.env_set``) that make a job trial ``number`` of the study.

    The storage URL is not among them: it may hold a password, and Hydra prints a job's overrides and
    saves them with its run. It travels in the launching process's environment (``STORAGE_ENV``,
    ``share_storage``), which every launcher's jobs inherit.
    """
    return {STUDY_ENV: study_name, TRIAL_ENV: str(number)}


def share_storage(storage_url: str) -> None:
    """Make ``storage_url`` the study storage of every job this process launches from now on."""
    os.environ[STORAGE_ENV] = storage_url


@dataclass
class TrialReporter:
    """Trial ``number`` of ``study``, as its job sees it: ``report`` each epoch, ``run_tags`` for the run."""

    study: optuna.Study
    trial: optuna.Trial
    metric: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> TrialReporter | None:
        """The trial this job runs, or None outside an Optuna sweep."""
        if TRIAL_ENV not in environ:
            return None
        storage = open_storage(environ[STORAGE_ENV])
        name = environ[STUDY_ENV]
        stored = load_existing_study(name, storage)
        if stored is None:
            raise RuntimeError(f"study '{name}' not found in Optuna storage {redact(environ[STORAGE_ENV])}")
        study = optuna.Study(name, storage, pruner=make_pruner(stored.user_attrs.get("pruner")))
        study_id = storage.get_study_id_from_name(name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(environ[TRIAL_ENV]))
        return cls(study, optuna.Trial(study, trial_id), stored.user_attrs["metric"])

    def run_tags(self) -> dict[str, str]:
        return {TRIAL_NUMBER_TAG: str(self.trial.number), STUDY_TAG: self.study.study_name}

    def attach_run(self, run_id: str) -> None:
        """Record the trial's MLflow run on the trial, so the study and the store point at each other."""
        with held():  # as around MLflow's calls (store.Store): a signal inside a transaction can keep a lock
            self.trial.set_user_attr(RUN_ID_ATTR, run_id)

    def report(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Report ``metrics[metric]`` at step ``epoch``; raise ``TrialPruned`` when the study's pruner says stop."""
        value = metrics[self.metric]
        with held():
            self.trial.report(value, step=epoch)
            pruned = self.trial.should_prune()
        if pruned:
            raise TrialPruned(epoch, value)

    def replay(self, history: list[Mapping[str, float]]) -> None:
        """Report the epochs a resumed run trained before this trial started (a retry continues the run)."""
        with held():
            for entry in history:
                if self.metric in entry:
                    self.trial.report(entry[self.metric], step=int(entry["epoch"]))
