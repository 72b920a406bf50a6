"""The seeds sweeper's settings, grid and rounds, without the CLI: bad settings named, the basic sweeper's grid."""

from __future__ import annotations

import pytest

from hydra_plugins.lenet_sweep_seeds.config import SeedsSweeperConf
from hydra_plugins.lenet_sweep_seeds.grid import SeedsSettings, configurations
from lenet_sweep.config import ConfigError
from lenet_sweep.seed_rounds import plan_sweep, seeds_wanted
from lenet_sweep.verdicts import UNRESOLVED, Design

# Bad settings raise ConfigError (what the sweeper's checks catch), not the imported grid.SettingsError: Hydra
# re-executes plugin modules each time it scans for plugins, so that class may not be the one raised.
DEFAULTS = {k: v for k, v in vars(SeedsSweeperConf()).items() if k not in ("_target_", "params")}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"min_seeds": 1}, "hydra.sweeper.min_seeds=1: must be at least 2"),
        ({"max_seeds": 2}, "hydra.sweeper.max_seeds=2: must be at least min_seeds=3"),
        ({"alpha": 0.5}, "hydra.sweeper.alpha=0.5: must be in (0, 0.5)"),
        ({"alpha": 0}, "hydra.sweeper.alpha=0.0: must be in (0, 0.5)"),
        ({"margin": -0.1}, "hydra.sweeper.margin=-0.1: must be > 0"),
        ({"metric": "val_acc"}, "hydra.sweeper.metric=val_acc: unknown metric"),
        ({"direction": "up"}, "hydra.sweeper.direction=up: choose maximize or minimize"),
        ({"compare": "some"}, "hydra.sweeper.compare=some: choose best or all"),
        ({"max_runs": 0}, "hydra.sweeper.max_runs=0: must be a positive integer"),
        ({"seeds_per_round": 0}, "hydra.sweeper.seeds_per_round=0: must be a positive integer"),
    ],
)
def test_each_bad_setting_is_named(setting, message):
    with pytest.raises(ConfigError) as raised:
        SeedsSettings.of({**DEFAULTS, **setting})
    assert str(raised.value).startswith(message)


def test_the_direction_follows_the_metric_unless_set():
    assert SeedsSettings.of(DEFAULTS).maximize
    assert not SeedsSettings.of({**DEFAULTS, "metric": "test_loss"}).maximize
    assert SeedsSettings.of({**DEFAULTS, "metric": "test_loss", "direction": "maximize"}).maximize


def test_the_grid_is_the_product_of_comma_lists_without_the_seed_axis():
    params = {"+study": "lenet,mlp", "seed": "0,1,2"}  # experiment=writeup's params
    grid = configurations(params, ["train.epochs=2", "aug=none,flip"], None)
    assert [c.label for c in grid] == [
        "study=lenet aug=none",
        "study=lenet aug=flip",
        "study=mlp aug=none",
        "study=mlp aug=flip",
    ]
    assert grid[0].job(4) == ["+study=lenet", "train.epochs=2", "aug=none", "seed=4"]


def test_the_command_line_replaces_a_presets_list():
    grid = configurations({"+study": "lenet,mlp,lenet_reg"}, ["+study=lenet,mlp"], None)
    assert [c.label for c in grid] == ["study=lenet", "study=mlp"]


def test_range_sweeps_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="optimizer.lr: the seeds sweeper takes comma lists"):
        configurations(None, ["optimizer.lr=interval(0.01,0.1)"], None)


DESIGN = Design.for_configs(3, min_seeds=3, max_seeds=7, seeds_per_round=2, alpha=0.05, margin=0.1)


def test_rounds_give_min_seeds_first_then_seeds_only_to_open_comparisons():
    assert seeds_wanted({"a": [], "b": [1.0]}, DESIGN, "best", True)[0] == {"a": 3, "b": 3}
    values = {
        "leader": [99.0, 99.2, 98.8],
        "close": [98.9, 99.1, 98.7],  # unresolved against the leader: both go to the next look
        "far": [50.0, 51.0, 49.0],  # resolved: no more seeds
    }
    wanted, comparisons = seeds_wanted(values, DESIGN, "best", True)
    assert wanted == {"leader": 5, "close": 5, "far": 3}
    assert [c.verdict for c in comparisons if c.b == "close"] == [UNRESOLVED]


def test_rounds_stop_at_max_seeds():
    values = {"a": [99.0, 99.2, 98.8, 99.1, 98.9, 99.3, 98.7], "b": [98.9, 99.1, 98.7, 99.0, 98.8, 99.2, 98.6]}
    wanted, comparisons = seeds_wanted(values, DESIGN, "best", True)
    assert wanted == {"a": 7, "b": 7} and comparisons[0].verdict == UNRESOLVED


def test_the_plan_expects_few_seeds_for_a_wide_gap_and_leaves_out_unknown_spreads():
    values = {"a": [90.0, 91.0, 89.0], "b": [10.0, 11.0, 9.0], "c": [50.0]}
    plans, expected = plan_sweep(values, DESIGN, "best", True)
    assert [(p.a, p.b) for p in plans] == [("a", "b")] and plans[0].p_resolved == 1.0
    assert expected == {"a": 3.0, "b": 3.0}
