"""The seeds sweeper's settings, checked, and its grid: the configurations the overrides name, seeds left out."""

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from lenet_sweep import identity
from lenet_sweep.config import Config, ConfigError, job_config
from lenet_sweep.verdicts import Design, DesignError

# The metrics every run logs per epoch, and which way is better.
METRIC_DIRECTIONS = {"test_acc": "maximize", "train_acc": "maximize", "test_loss": "minimize", "train_loss": "minimize"}
COMPARE_MODES = ("best", "all")
SEED_KEY = "seed"


class SettingsError(ConfigError):
    """A seeds-sweeper setting or grid that cannot work; one line naming the key."""


@dataclass(frozen=True)
class SeedsSettings:
    """``hydra.sweeper.*`` of ``hydra/sweeper=seeds`` as plain, checked values."""

    min_seeds: int
    max_seeds: int
    seeds_per_round: int
    metric: str
    direction: str
    alpha: float
    margin: float
    compare: str
    max_runs: int | None

    @classmethod
    def of(cls, sweeper: Mapping[str, Any]) -> "SeedsSettings":
        """Checked settings from the sweeper's node; ``SettingsError`` names the first bad one."""
        metric = sweeper["metric"]
        if metric not in METRIC_DIRECTIONS:
            raise SettingsError(
                f"hydra.sweeper.metric={metric}: unknown metric; choose from {', '.join(METRIC_DIRECTIONS)}"
            )
        direction = sweeper["direction"] or METRIC_DIRECTIONS[metric]
        if direction not in ("maximize", "minimize"):
            raise SettingsError(f"hydra.sweeper.direction={direction}: choose maximize or minimize")
        if sweeper["compare"] not in COMPARE_MODES:
            raise SettingsError(f"hydra.sweeper.compare={sweeper['compare']}: choose best or all")
        max_runs = sweeper["max_runs"]
        if max_runs is not None and max_runs < 1:
            raise SettingsError(f"hydra.sweeper.max_runs={max_runs}: must be a positive integer (or null)")
        settings = cls(
            sweeper["min_seeds"],
            sweeper["max_seeds"],
            sweeper["seeds_per_round"],
            metric,
            direction,
            float(sweeper["alpha"]),
            float(sweeper["margin"]),
            sweeper["compare"],
            max_runs,
        )
        settings.design(1)  # the design's own checks
        return settings

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def design(self, n_configs: int) -> Design:
        """The sequential design for ``n_configs`` configurations; ``SettingsError`` naming a bad setting."""
        try:
            return Design.for_configs(
                n_configs,
                min_seeds=self.min_seeds,
                max_seeds=self.max_seeds,
                seeds_per_round=self.seeds_per_round,
                alpha=self.alpha,
                margin=self.margin,
            )
        except DesignError as error:
            raise SettingsError(f"hydra.sweeper.{error}") from None


@dataclass(frozen=True)
class Configuration:
    """One point of the grid: its overrides without a seed, and a label made of the values that vary."""

    label: str
    overrides: tuple[str, ...]

    def job(self, seed: int) -> list[str]:
        """The overrides of this configuration's job with ``seed``."""
        return [*self.overrides, f"{SEED_KEY}={seed}"]


def configurations(params: Mapping[str, str] | None, arguments: Sequence[str], config_loader) -> list[Configuration]:
    """The grid the sweeper's ``params`` and the command line's overrides span, as the basic sweeper reads them.

    Comma lists are axes; a later value of a key replaces an earlier one (the command line
    wins over a preset's params). The ``seed`` axis is left out: the sweeper chooses seeds.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(arguments))
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise SettingsError(f"{key}: the seeds sweeper takes comma lists, not {override.value_type.name}")
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
    axes = {key: values for key, values in axes.items() if key.lstrip("+~") != SEED_KEY}
    varying = [key for key, values in axes.items() if len(values) > 1]
    grid = []
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination))
        label = " ".join(chosen[key].lstrip("+~") for key in varying) or "all runs"
        grid.append(Configuration(label, tuple(combination)))
    return grid


def composed_config(config_loader, sweep_config: DictConfig, overrides: Sequence[str]) -> Config:
    """The typed config of one job, composed as the launcher will; ``ConfigError`` naming a bad key."""
    return job_config(config_loader.load_sweep_config(sweep_config, list(overrides)))


def seed_fingerprints(cfg: Config, seeds: range) -> list[str]:
    """The config fingerprints of ``cfg`` with each of ``seeds``: the runs a job with that seed would reuse."""
    flat = identity.flat_config(cfg)
    return [identity.config_fingerprint({**flat, SEED_KEY: seed}) for seed in seeds]
