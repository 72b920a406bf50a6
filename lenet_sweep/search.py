"""What a launch of ``hydra/sweeper=optuna`` searches: derived the same way by its check (before the sweep's
parent run exists) and by the sweeper, and each trial's job overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from lenet_sweep.config import Config, job_config
from lenet_sweep.identity import computes
from lenet_sweep.search_space import SearchSpace, corner_params, parse_search_space, trial_overrides
from lenet_sweep.study import SearchSettings, default_study_name, resolve_storage_url
from lenet_sweep.trial import trial_env
from lenet_sweep.tuned import study_grid
from lenet_sweep.uris import redact

# Every trial trains its own run, reporting its own epochs to the study: never skipped on an earlier result.
TRIAL_OVERRIDES = ("sweep.skip_finished=never",)


@dataclass(frozen=True)
class Search:
    settings: SearchSettings
    space: SearchSpace
    study_name: str
    storage_url: str

    def job_overrides(self, params: Mapping[str, Any], trial_number: int) -> list[str]:
        """The overrides of the job that runs trial ``trial_number`` at ``params``."""
        env = trial_env(self.study_name, trial_number)
        env_overrides = [f"++hydra.job.env_set.{key}={_quoted(value)}" for key, value in env.items()]
        return [*trial_overrides(self.space, params), *TRIAL_OVERRIDES, *env_overrides]


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def search_of(sweeper: Mapping[str, Any], task_overrides: list[str], start_dir: Path) -> Search:
    """The search that ``hydra.sweeper``'s settings and the command line's overrides describe.

    Raises ``ConfigError`` on a bad space. The settings themselves are checked by ``check_jobs``,
    which knows the jobs' ``data.val_size``.
    """
    params = sweeper.get("params") or {}
    space = parse_search_space([f"{key}={value}" for key, value in params.items()] + list(task_overrides))
    names = {f.name for f in fields(SearchSettings)}
    settings = SearchSettings(**{key: value for key, value in sweeper.items() if key in names})
    fixed = [o for o in space.fixed if computes(o.partition("=")[0])]
    name = settings.study_name or default_study_name(fixed, space.describe())
    return Search(settings, space, name, resolve_storage_url(settings.storage, start_dir))


def searches_of(sweeper: Mapping[str, Any], task_overrides: list[str], start_dir: Path) -> list[Search]:
    """One search per point of ``hydra.sweeper.studies`` (``lenet_sweep.tuned``), its overrides fixed for that
    study; a single search when ``studies`` is unset. Raises ``ConfigError`` on a bad space or grid."""
    return [search_of(sweeper, [*task_overrides, *fixed], start_dir) for fixed in study_grid(sweeper.get("studies"))]


def check_jobs(config: DictConfig, search: Search) -> list[Config]:
    """Compose and check jobs at the corners of the space (``corner_params``) as the launcher will.

    Catches unknown keys, out-of-range bounds (``optimizer.lr=interval(0,1)``) and bad config
    group choices before any trial exists; then checks the settings against the jobs' validation
    split. Raises ``ConfigError`` or Hydra's composition error. The composed configs, first corner first.
    """
    jobs = [
        compose_job(config, [*trial_overrides(search.space, p), *TRIAL_OVERRIDES]) for p in corner_params(search.space)
    ]
    for cfg in jobs:
        search.settings.check(cfg.data.val_size)
    return jobs


def compose_job(config: DictConfig, overrides: list[str]) -> Config:
    """The typed config of the job ``overrides`` make, composed as the launcher will; raises on unknown keys,
    bad values or group choices."""
    return job_config(GlobalHydra.instance().config_loader().load_sweep_config(config, overrides))


def describe(search: Search) -> list[str]:
    """The space and settings, one line each, for the plan and the sweep's log."""
    s = search.settings
    seed = "" if s.seed is None else f" (seed {s.seed})"
    pruner = s.pruner if s.pruner == "none" else f"{s.pruner} (startup trials {s.pruner_startup_trials}, "
    pruner += "" if s.pruner == "none" else f"warm-up epochs {s.pruner_warmup_epochs})"
    direction = "maximize" if s.maximize else "minimize"
    return [
        f"study '{search.study_name}' in {redact(search.storage_url)}",
        f"  {direction} {s.metric} ({s.objective} epoch); sampler {s.sampler}{seed}; pruner {pruner}",
        "  fixed: " + (" ".join(search.space.fixed) or "(none)"),
        *(f"  search {line}" for line in search.space.describe()),
    ]
