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
from lenet_sweep.search import Search, describe, search_of
from lenet_sweep.store import MLFLOW_RUN_NAME, Store, StoreRefused
from lenet_sweep.study import (
    RETRY_OF_ATTR,
    RUN_ID_ATTR,
    SWEEP_RUN_ATTR,
    open_storage,
    open_study,
    remaining_trials,
)
from lenet_sweep.trial import STUDY_TAG, TRIAL_NUMBER_TAG, TRIAL_STATE_TAG, share_storage

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
        """Run the study's remaining trials; the launcher's results, batch by batch."""
        search = search_of(self.settings, arguments, Path.cwd())
        study = open_study(search.settings, search.study_name, open_storage(search.storage_url))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = ParentRun.read(sweep_dir)  # written by lenet_sweep.sweep.SweepCallback, which runs first
        runs = Store(parent.tracking_uri)
        runs.set_tags(parent.run_id, {MLFLOW_RUN_NAME: f"study {search.study_name}", STUDY_TAG: search.study_name})
        log.info("%s", "\n".join(describe(search)))
        retry_dead_trials(study, runs, parent.run_id)
        share_storage(search.storage_url)
        returns, job_index = [], 0
        while remaining := remaining_trials(search.settings.n_trials, study.get_trials(deepcopy=False)):
            trials = [study.ask(dict(search.space.params)) for _ in range(min(search.settings.n_jobs, remaining))]
            for trial in trials:
                trial.set_user_attr(SWEEP_RUN_ATTR, parent.run_id)
            batch = [search.job_overrides(trial.params, trial.number) for trial in trials]
            results = self.launcher.launch(batch, initial_job_idx=job_index)
            job_index += len(batch)
            for trial, result in zip(trials, results):
                tell(study, trial, result, search, runs)
            returns.append(list(results))
        _log_best(study)
        return returns


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
