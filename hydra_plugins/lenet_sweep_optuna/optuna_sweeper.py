"""``hydra/sweeper=optuna``: an Optuna study on the ask-and-tell interface, its trials run by Hydra's launcher.

Each round asks the study for at most ``n_jobs`` trials (no more than remain of
``n_trials``, counting the trials an earlier launch ran) and hands them to the
configured launcher (basic, joblib, SLURM) as one batch. A job reports every epoch
to the study through the storage and stops when the pruner says so
(``lenet_sweep.trial``); when the batch is back, the sweeper reads each job's
status file and MLflow run, tells the study the trial's value or state, and tags
the run ``trial_state``. A launcher's ``launch`` returns once its whole batch is
done, so a slot freed by a trial that finished or was pruned early waits for the
batch's slowest trial (docs/search.md).

With ``studies`` the sweeper runs one study per experiment, one after another,
each with the same budget, and with ``compare_seeds`` it then trains each
study's best trial again with those seeds in one batch (``lenet_sweep.tuned``).
"""

import logging
import math
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lenet_sweep.results import JobResult, ParentRun
from lenet_sweep.search import Search, describe, searches_of
from lenet_sweep.store import MLFLOW_RUN_NAME, TUNED_FROM_TAG, Store, StoreRefused
from lenet_sweep.study import (
    RETRY_OF_ATTR,
    RUN_ID_ATTR,
    SWEEP_RUN_ATTR,
    open_storage,
    open_study,
    remaining_trials,
)
from lenet_sweep.trial import STUDY_TAG, TRIAL_NUMBER_TAG, TRIAL_STATE_TAG, share_storage
from lenet_sweep.tuned import TUNED_TRIAL_TAG, compare_job_overrides

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = settings
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Run each study's remaining trials, then the compare jobs; the launcher's results, batch by batch."""
        searches = searches_of(self.settings, arguments, Path.cwd())
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = ParentRun.read(sweep_dir)  # written by lenet_sweep.sweep.SweepCallback, which runs first
        runs = Store(parent.tracking_uri)
        runs.set_tags(parent.run_id, parent_tags([s.study_name for s in searches]))
        share_storage(searches[0].storage_url)
        returns: list[list[JobReturn]] = []
        studies = []
        for search in searches:
            study = open_study(search.settings, search.study_name, open_storage(search.storage_url))
            log.info("%s", "\n".join(describe(search)))
            retry_dead_trials(study, runs, parent.run_id)
            returns += self._run_trials(search, study, parent.run_id, runs, sum(map(len, returns)))
            _log_best(study)
            studies.append((search, study))
        if self.settings.get("compare_seeds"):
            returns.append(self._compare(studies, runs, sum(map(len, returns))))
        return returns

    def _run_trials(
        self, search: Search, study: optuna.Study, parent_run_id: str, runs: Store, job_index: int
    ) -> list[list[JobReturn]]:
        """Ask, launch and tell batches of at most ``n_jobs`` trials until the study has ``n_trials``."""
        returns = []
        while remaining := remaining_trials(search.settings.n_trials, study.get_trials(deepcopy=False)):
            trials = [study.ask(dict(search.space.params)) for _ in range(min(search.settings.n_jobs, remaining))]
            for trial in trials:
                trial.set_user_attr(SWEEP_RUN_ATTR, parent_run_id)
            batch = [search.job_overrides(trial.params, trial.number) for trial in trials]
            results = self.launcher.launch(batch, initial_job_idx=job_index)
            job_index += len(batch)
            for trial, result in zip(trials, results):
                tell(study, trial, result, search, runs)
            returns.append(list(results))
        return returns

    def _compare(self, studies: list[tuple[Search, optuna.Study]], runs: Store, job_index: int) -> list[JobReturn]:
        """Each study's best trial trained again with every ``compare_seeds``, in one batch; runs tagged
        ``tuned_from`` (the study) and ``tuned_trial``."""
        seeds, extra = list(self.settings["compare_seeds"]), list(self.settings.get("compare_overrides") or [])
        batch, origins = [], []
        for search, study in studies:
            try:
                best = study.best_trial
            except ValueError:
                log.warning("study '%s': no trial completed, so nothing of it is compared", study.study_name)
                continue
            for seed in seeds:
                batch.append(compare_job_overrides(search.space.fixed, best.params, extra, seed))
                origins.append({TUNED_FROM_TAG: study.study_name, TUNED_TRIAL_TAG: best.number})
        if not batch:
            return []
        log.info("compare: %d studies' best trials x seeds %s: %d jobs", len(batch) // len(seeds), seeds, len(batch))
        results = self.launcher.launch(batch, initial_job_idx=job_index)
        for tags, result in zip(origins, results):
            job = JobResult.read(Path(result.hydra_cfg.hydra.runtime.output_dir))
            if job and job.run_id:
                runs.set_tags(job.run_id, tags)
        return list(results)


def parent_tags(study_names: list[str]) -> dict[str, str]:
    """The sweep's parent run: named after its study (tagged with it), or after how many studies it runs."""
    if len(study_names) == 1:
        return {MLFLOW_RUN_NAME: f"study {study_names[0]}", STUDY_TAG: study_names[0]}
    return {MLFLOW_RUN_NAME: f"{len(study_names)} studies, then compare"}


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn, search: Search, runs: Store) -> None:
    """Tell the study how trial ``trial``'s job ended, from its status file and MLflow run; tag the run likewise."""
    job = JobResult.read(Path(result.hydra_cfg.hydra.runtime.output_dir))
    status = job.status if job else "FAILED"  # no status file: the job's process died
    run_id = job.run_id if job else None
    if run_id:
        trial.set_user_attr(RUN_ID_ATTR, run_id)
    state, value = TrialState.FAIL, None
    if status in ("FINISHED", "SKIPPED"):
        settings = search.settings
        value = objective_value(runs, run_id, settings.metric, settings.objective, settings.maximize)
        state = TrialState.COMPLETE if value is not None else TrialState.FAIL
    elif status == "PRUNED":
        state = TrialState.PRUNED
    study.tell(trial, value, state=state)
    if status == "KILLED":  # interrupted (SIGTERM, preemption): tried again, continuing its run
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
    if run_id:
        state_tag = "FAILED" if state == TrialState.FAIL else state.name
        runs.set_tags(run_id, {TRIAL_STATE_TAG: state_tag, TRIAL_NUMBER_TAG: trial.number, STUDY_TAG: study.study_name})
    log.info("trial %d %s%s", trial.number, state.name, "" if value is None else f": {value:.4f}")


def objective_value(runs: Store, run_id: str | None, metric: str, objective: str, maximize: bool) -> float | None:
    """The trial's value: ``metric`` at its best epoch (``best``) or last (``final``) in ``run_id``; None if absent."""
    if not run_id:
        return None
    by_step = {m.step: m.value for m in sorted(runs.metric_history(run_id, metric), key=lambda m: m.timestamp)}
    values = [v for v in by_step.values() if math.isfinite(v)]
    if not values:
        return None
    if objective == "final":
        return by_step[max(by_step)]
    return max(values) if maximize else min(values)


def retry_dead_trials(study: optuna.Study, runs: Store, parent_run_id: str) -> None:
    """Mark failed the RUNNING trials whose launch is gone, and ask for their parameters again.

    A launch owns its trials through its MLflow parent run: when that run is this
    launch's own (the same sweep relaunched: the earlier launch is over) or is no
    longer RUNNING (closed as orphaned), nothing runs them any more. Only this
    process enqueues, so Optuna's racy parallel enqueue on SQLite (optuna#4002) never applies.
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(SWEEP_RUN_ATTR)
        if owner is None:
            continue  # not asked by this sweeper: whoever asked it owns it
        if owner != parent_run_id:
            try:
                if runs.get_run(owner).info.status == "RUNNING":
                    continue
            except StoreRefused:
                continue
        study.tell(trial.number, state=TrialState.FAIL)
        # Told first: a launch that dies in between leaves one more failed trial, never one retried twice.
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        log.warning("trial %d died (its launch ended before it did); its parameters are tried again", trial.number)


def _log_best(study: optuna.Study) -> None:
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        log.warning("study '%s': no trial completed", study.study_name)
        return
    print(f"study '{study.study_name}': best trial {best.number}, value {best.value:.4f}, params {best.params}")
