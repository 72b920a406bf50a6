import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lenet_sweep.config import register_configs
from lenet_sweep.models import build_model, count_parameters, parameter_table
from tests.helpers.cli import REPO


def composed_model(*overrides: str) -> torch.nn.Module:
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = OmegaConf.to_object(compose("config", overrides=list(overrides)))
    reg = cfg.model.regularization
    return build_model(cfg.model.arch, reg.dropout, reg.batchnorm)


def test_writeup_parameter_counts():
    assert count_parameters(build_model("lenet")) == 44_426
    assert count_parameters(build_model("mlp")) == 49_240
    assert count_parameters(build_model("lenet", dropout=0.2, batchnorm=True)) == 44_878


def test_per_layer_counts_match_the_writeup():
    assert parameter_table(build_model("lenet")) == [
        ("conv1", 156),
        ("conv2", 2_416),
        ("conv3", 30_840),
        ("fc1", 10_164),
        ("fc2", 850),
    ]
    assert parameter_table(build_model("mlp")) == [("fc1", 47_100), ("fc2", 1_830), ("fc3", 310)]


def test_lenet_with_dropout_bn_is_lenet_reg_layer_by_layer():
    preset = composed_model("model=lenet_reg")
    combined = composed_model("model=lenet", "regularization=dropout_bn")
    assert str(preset) == str(combined)
    assert [(n, p.shape) for n, p in preset.named_parameters()] == [
        (n, p.shape) for n, p in combined.named_parameters()
    ]
    assert count_parameters(preset) == 44_878
    assert isinstance(preset.dropout, torch.nn.Dropout) and preset.dropout.p == 0.2


@pytest.mark.parametrize("arch,last_hidden", [("lenet", "fc1"), ("mlp", "fc2")])
def test_regularization_applies_to_any_model(arch, last_hidden):
    model = build_model(arch, dropout=0.3, batchnorm=True)
    assert model.dropout.p == 0.3
    assert isinstance(getattr(model, f"{last_hidden}_bn"), torch.nn.BatchNorm1d)
    plain = build_model(arch)
    assert not any(
        isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in plain.modules()
    )


@pytest.mark.parametrize("arch", ["lenet", "mlp"])
def test_forward_shape(arch):
    assert build_model(arch)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
