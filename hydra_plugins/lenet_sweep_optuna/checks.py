"""The check ``hydra/sweeper=optuna`` runs first among the multirun callbacks: bad input stops the launch
with one line and exit code 2 before any trial, study or MLflow run exists; ``sweep.plan=true`` prints the
study's plan and exits."""

import sys
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lenet_sweep.config import ConfigError, one_line
from lenet_sweep.data import DataError
from lenet_sweep.job import load_job_dataset
from lenet_sweep.search import check_jobs, compose_job, describe, searches_of
from lenet_sweep.search_space import corner_params
from lenet_sweep.study import check_same_settings, load_existing_study, open_storage, remaining_trials, trial_counts
from lenet_sweep.tuned import compare_job_overrides


class SearchCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        start_dir = Path.cwd()
        studies = []
        try:
            searches = searches_of(config.hydra.sweeper, list(config.hydra.overrides.task), start_dir)
            for search in searches:
                jobs = check_jobs(config, search)
                load_job_dataset(jobs[0], start_dir)  # found and verified, with room for the validation split
            check_compare_jobs(config, searches[0])
            for search in searches:
                storage = open_storage(search.storage_url, create=not config.sweep.plan)
                study = load_existing_study(search.study_name, storage)
                if study is not None:
                    check_same_settings(study.user_attrs, search.settings.stored(), search.study_name)
                studies.append((search, study))
        except (ConfigError, DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except (HydraException, OmegaConfBaseException) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            sys.exit(2)
        if config.sweep.plan:
            print("\n".join(line for search, study in studies for line in plan_lines(search, study)))
            seeds = list(config.hydra.sweeper.compare_seeds)
            if seeds:
                overrides = " ".join(config.hydra.sweeper.compare_overrides)
                print(
                    f"then: each study's best trial with seeds {seeds} ({overrides}), {len(studies) * len(seeds)} runs"
                )
            sys.exit(0)


def check_compare_jobs(config: DictConfig, search) -> None:
    """Compose a compare job of the first study at the space's low corner, so a bad compare override is
    refused now, not after the studies have run."""
    seeds = list(config.hydra.sweeper.compare_seeds)
    if not seeds:
        return
    low = corner_params(search.space)[0]
    overrides = compare_job_overrides(search.space.fixed, low, list(config.hydra.sweeper.compare_overrides), seeds[0])
    compose_job(config, overrides)


def plan_lines(search, study) -> list[str]:
    """What a launch would do: the space, the trials so far by state, how many remain."""
    trials = [] if study is None else study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    n_trials = search.settings.n_trials
    so_far = ", ".join(f"{counts[state]} {state}" for state in ("complete", "pruned", "fail", "running", "waiting"))
    existing = "a new study" if study is None else f"{so_far} ({counts['died']} died and retried)"
    lines = describe(search)
    lines.append(f"trials: {n_trials} in total; so far {existing}; {remaining_trials(n_trials, trials)} remain")
    return lines
