"""``hydra/sweeper=seeds``: the sweeper's settings, and the check that runs before the sweep's parent run exists."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class SeedsSweeperConf:
    _target_: str = "hydra_plugins.lenet_sweep_seeds.seeds_sweeper.SeedsSweeper"
    # Seeds every configuration gets before any comparison is judged.
    min_seeds: int = 3
    # The most seeds a configuration gets; comparisons still open then end unresolved.
    max_seeds: int = 10
    # Seeds added per round to the configurations of unresolved comparisons.
    seeds_per_round: int = 2
    # The compared value: this metric at each run's final epoch.
    metric: str = "test_acc"
    # maximize or minimize; null: maximize an accuracy, minimize a loss.
    direction: str | None = None
    # The chance of any wrong verdict, over every look and every pair together.
    alpha: float = 0.05
    # The smallest difference worth resolving, in the metric's units (test_acc: points).
    margin: float = 0.1
    # best: each configuration against the current leader; all: every pair.
    compare: str = "best"
    # The most runs in all (seeds summed over configurations, reused ones included); null: no limit.
    max_runs: int | None = None
    # The grid, key -> comma list, as on the command line (for presets such as experiment=writeup).
    params: dict[str, str] | None = None


# What ``hydra/sweeper=seeds`` sets in the ``hydra`` node: the sweeper, and its check as a callback. Hydra composes
# this option before the primary config, so the check runs first, before the sweep's parent run is made. A plain
# dict, not a dataclass: the ``hydra`` node it merges into has keys (help, job, ...) a dataclass would refuse.
SEEDS_SWEEPER_CHOICE = {
    "sweeper": SeedsSweeperConf,
    "callbacks": {"seeds_check": {"_target_": "hydra_plugins.lenet_sweep_seeds.checks.SeedsCheck"}},
}

ConfigStore.instance().store(
    group="hydra/sweeper", name="seeds", node=SEEDS_SWEEPER_CHOICE, package="hydra", provider="lenet_sweep"
)
