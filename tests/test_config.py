import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lenet_sweep.config import Config, ConfigError, register_configs
from lenet_sweep.identity import run_name
from tests.helpers.cli import REPO, run_cli, runs_of


def composed(*overrides: str) -> Config:
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


def test_defaults_are_the_writeup_setup():
    cfg = composed()
    assert (cfg.model.name, cfg.model.regularization.name, cfg.aug.name, cfg.optimizer.name) == (
        "lenet",
        "none",
        "none",
        "sgd",
    )
    assert (cfg.optimizer.lr, cfg.optimizer.momentum) == (0.01, 0.9)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.seed) == (15, 64, 1000, 0)
    assert cfg.mlflow.experiment == "lenet_sweep" and cfg.mlflow.tracking_uri is None


@pytest.mark.parametrize(
    "override,check",
    [
        ("model=lenet", lambda c: (c.model.arch, c.model.regularization.name) == ("lenet", "none")),
        ("model=mlp", lambda c: c.model.arch == "mlp"),
        (
            "model=lenet_reg",
            lambda c: (c.model.name, c.model.arch, c.model.regularization.name) == ("lenet_reg", "lenet", "dropout_bn"),
        ),
        (
            "regularization=none",
            lambda c: (c.model.regularization.dropout, c.model.regularization.batchnorm) == (0.0, False),
        ),
        (
            "regularization=dropout",
            lambda c: (c.model.regularization.dropout, c.model.regularization.batchnorm) == (0.2, False),
        ),
        (
            "regularization=batchnorm",
            lambda c: (c.model.regularization.dropout, c.model.regularization.batchnorm) == (0.0, True),
        ),
        (
            "regularization=dropout_bn",
            lambda c: (c.model.regularization.dropout, c.model.regularization.batchnorm) == (0.2, True),
        ),
        ("aug=none", lambda c: c.aug.hflip_p == 0.0),
        ("aug=flip", lambda c: c.aug.hflip_p == 0.5),
        ("optimizer=sgd", lambda c: (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum) == ("sgd", 0.01, 0.9)),
        ("optimizer=adam", lambda c: (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum) == ("adam", 0.001, None)),
    ],
)
def test_every_group_option_composes(override, check):
    assert check(composed(override))


def test_regularization_applies_to_any_model():
    cfg = composed("model=mlp", "regularization=dropout")
    assert (cfg.model.arch, cfg.model.regularization.name, cfg.model.regularization.dropout) == ("mlp", "dropout", 0.2)


@pytest.mark.parametrize(
    "order", [("model=lenet_reg", "regularization=none"), ("regularization=none", "model=lenet_reg")]
)
def test_command_line_regularization_wins_over_model_preset(order):
    cfg = composed(*order)
    assert cfg.model.name == "lenet_reg"
    assert cfg.model.regularization.name == "none"


@pytest.mark.parametrize(
    "overrides,name",
    [
        ((), "lenet·none·sgd·s0"),
        (("model=mlp", "regularization=dropout", "aug=flip", "seed=2"), "mlp+dropout·flip·sgd·s2"),
        (("model=lenet_reg", "optimizer=adam", "optimizer.lr=0.1"), "lenet_reg·none·adam·s0·lr=0.1"),
        (
            (
                "+model.regularization.dropout=0.3",
                "train.epochs=3",
                "mlflow.experiment=x",
                "train.threads=1",
                "data.root=/data",
            ),
            "lenet·none·sgd·s0·dropout=0.3·epochs=3",
        ),
    ],
)
def test_run_names_show_what_differs(overrides, name):
    assert run_name(composed(*(o.lstrip("+") for o in overrides)), overrides) == name


def test_range_checks_name_the_key():
    with pytest.raises(ConfigError, match="train.batch_size"):
        composed("train.batch_size=0")
    with pytest.raises(ConfigError, match="optimizer.lr"):
        composed("optimizer.lr=-1")
    with pytest.raises(ConfigError, match="optimizer.momentum"):
        composed("optimizer=adam", "optimizer.momentum=0.9")


def assert_stopped_with_one_line(result, key):
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and key in error_lines[0], result.stderr
    assert "Epoch" not in result.stdout


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.parametrize(
    "override,key",
    # Range checks end the same way; test_range_checks_name_the_key covers each in-process.
    [
        ("train.epochs=abc", "train.epochs"),
        ("model=resnet", "model/resnet"),
        ("+train.epoch=3", "train.epoch: unknown key"),
    ],
)
def test_invalid_values_fail_before_training_with_one_line(workdir, override, key):
    result = run_cli([override], workdir)
    assert_stopped_with_one_line(result, key)
    assert not (workdir / "outputs" / "mlflow.db").exists() or not runs_of(workdir)[1]


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.parametrize(
    "sweep,key",
    [(["optimizer.lr=0.1,-1"], "optimizer.lr=-1.0"), (["model=lenet,bogus"], "model/bogus")],
)
def test_a_bad_job_stops_a_multirun_before_any_job_trains(workdir, sweep, key):
    result = run_cli(["-m", *sweep], workdir)
    assert_stopped_with_one_line(result, key)
    assert not (workdir / "outputs" / "mlflow.db").exists(), "not even a parent run"
