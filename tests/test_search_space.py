"""The Optuna sweeper's pure logic: the search-space grammar, the settings' checks, trial counting."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from lenet_sweep.config import ConfigError
from lenet_sweep.search_space import corner_params, format_value, parse_search_space, trial_overrides
from lenet_sweep.study import RETRY_OF_ATTR, SearchSettings, remaining_trials, resolve_storage_url, trial_counts


def test_grammar_of_hydras_optuna_sweeper():
    space = parse_search_space(
        [
            "model=lenet",
            "optimizer.lr=tag(log,interval(1e-4,0.3))",
            "optimizer.momentum=interval(0.5,0.99)",
            "regularization=choice(none,dropout)",
            "train.batch_size=range(32,129,32)",
            "train.epochs=tag(int,interval(1,5))",
            "seed=0,1",
        ]
    )
    assert space.fixed == ("model=lenet",)
    assert space.params == {
        "optimizer.lr": FloatDistribution(1e-4, 0.3, log=True),
        "optimizer.momentum": FloatDistribution(0.5, 0.99),
        "regularization": CategoricalDistribution(["none", "dropout"]),
        # Hydra's range excludes its stop, as the basic sweeper enumerates it: 32, 64, 96, 128.
        "train.batch_size": IntDistribution(32, 128, step=32),
        "train.epochs": IntDistribution(1, 5),
        "seed": CategoricalDistribution([0, 1]),
    }


def test_a_key_given_twice_takes_its_last_value():
    space = parse_search_space(["optimizer.lr=interval(0.1,0.2)", "optimizer.lr=0.05"])
    assert space.fixed == ("optimizer.lr=0.05",) and not space.params


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=interval(1,0)", "lower bound must be below"),
        ("optimizer.lr=interval(0.1,0.1)", "lower bound must be below"),
        ("optimizer.lr=tag(log,interval(0,0.3))", "log interval needs bounds > 0"),
        ("train.epochs=tag(int,interval(1.5,3))", "integer bounds"),
        ("optimizer.lr=tag(fancy,interval(0.1,0.3))", "unknown tag fancy"),
        ("train.batch_size=range(5,1)", "range is empty"),
    ],
)
def test_bad_bounds_name_the_override(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_search_space([override])
    assert override.split("=")[0] in str(error.value)


def test_trial_overrides_read_back_as_the_sampled_values():
    space = parse_search_space(["model=mlp", "optimizer.lr=interval(0.001,0.1)", "aug=choice(none,flip)"])
    overrides = trial_overrides(space, {"optimizer.lr": 0.0123456789, "aug": "flip"})
    assert overrides == ["model=mlp", "optimizer.lr=0.0123456789", "aug=flip"]
    assert format_value(True) == "true" and format_value("a b") == "'a b'" and format_value("it's") == "'it\\'s'"


def test_corners_cover_both_ends_and_every_choice():
    space = parse_search_space(["optimizer.lr=interval(0.001,0.1)", "regularization=choice(none,dropout,batchnorm)"])
    points = corner_params(space)
    assert {p["optimizer.lr"] for p in points} == {0.001, 0.1}
    assert {p["regularization"] for p in points} == {"none", "dropout", "batchnorm"}


@pytest.mark.parametrize(
    "settings, val_size, message",
    [
        (SearchSettings(metric="test_acc"), 200, "validation metrics only"),
        (SearchSettings(), 0, "needs a validation split: set data.val_size"),
        (SearchSettings(sampler="grid"), 200, "sampler=grid: must be one of tpe, random, cmaes"),
        (SearchSettings(pruner="asha"), 200, "pruner=asha: must be one of none, median, hyperband"),
        (SearchSettings(objective="mean"), 200, "objective=mean"),
        (SearchSettings(n_trials=0), 200, "n_trials=0"),
    ],
)
def test_bad_settings_name_the_key(settings, val_size, message):
    with pytest.raises(ConfigError, match=message):
        settings.check(val_size)


def test_direction_follows_the_metric_unless_set():
    assert SearchSettings(metric="val_acc").maximize and not SearchSettings(metric="val_loss").maximize
    assert not SearchSettings(metric="val_acc", direction="minimize").maximize


def test_relative_storage_paths_are_taken_from_the_start_dir(tmp_path):
    assert resolve_storage_url(None, tmp_path) == f"sqlite:///{tmp_path}/outputs/optuna.db"
    assert resolve_storage_url("sqlite:///s.db", tmp_path) == f"sqlite:///{tmp_path}/s.db"
    assert resolve_storage_url("journal:j.log", tmp_path) == f"journal:{tmp_path}/j.log"
    assert resolve_storage_url("postgresql://h/db", tmp_path) == "postgresql://h/db"


def test_a_died_trial_that_was_retried_does_not_count():
    lr = {"lr": FloatDistribution(0.001, 0.1)}
    trials = [
        create_trial(state=TrialState.COMPLETE, value=90.0, params={"lr": 0.01}, distributions=lr),
        create_trial(state=TrialState.FAIL, params={"lr": 0.02}, distributions=lr),
        create_trial(state=TrialState.PRUNED, params={"lr": 0.03}, distributions=lr),
    ]
    for number, trial in enumerate(trials):
        trial.number = number
    retry = create_trial(state=TrialState.WAITING, user_attrs={RETRY_OF_ATTR: 1})
    retry.number = 3
    trials.append(retry)
    counts = trial_counts(trials)
    assert (counts["complete"], counts["pruned"], counts["fail"], counts["waiting"], counts["died"]) == (1, 1, 0, 1, 1)
    assert remaining_trials(5, trials) == 2
