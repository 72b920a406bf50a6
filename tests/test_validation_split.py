"""data.val_size: a class-balanced validation split held out of the training set, fixed by data.subset_seed."""

from __future__ import annotations

import torch

from lenet_sweep.config import Config
from lenet_sweep.datasets import load_mnist
from lenet_sweep.identity import config_fingerprint, flat_config
from lenet_sweep.models import build_model
from lenet_sweep.train import DeviceData, EpochMetrics, evaluate, fit, make_optimizer


def _keys(split) -> set[bytes]:
    return {bytes(image.numpy().tobytes()) for image in split.images}


def test_the_validation_split_is_balanced_fixed_and_never_trained_on():
    small = load_mnist(train_limit=600, test_limit=100, val_size=200)
    large = load_mnist(train_limit=2000, test_limit=100, val_size=200)
    assert len(small.val) == 200 and len(small.train) == 600
    assert torch.bincount(small.val.labels).tolist() == [20] * 10
    assert torch.equal(small.val.images, large.val.images)  # the same whatever the training subset
    assert not _keys(small.val) & _keys(large.train)
    other_seed = load_mnist(train_limit=600, test_limit=100, val_size=200, subset_seed=1)
    assert not torch.equal(small.val.images, other_seed.val.images)


def test_val_size_zero_keeps_every_fingerprint():
    cfg = Config()
    flat = flat_config(cfg)
    assert flat["data.val_size"] == 0
    assert config_fingerprint(flat) == config_fingerprint({k: v for k, v in flat.items() if k != "data.val_size"})
    assert config_fingerprint({**flat, "data.val_size": 200}) != config_fingerprint(flat)


def test_fit_logs_validation_metrics_beside_the_test_metrics():
    dataset = load_mnist(train_limit=600, test_limit=100, val_size=200)  # as above: loaded once
    data = DeviceData(
        dataset.train.images.unsqueeze(1).float() / 255,
        dataset.train.labels,
        dataset.test.images.unsqueeze(1).float() / 255,
        dataset.test.labels,
        dataset.val.images.unsqueeze(1).float() / 255,
        dataset.val.labels,
    )
    torch.manual_seed(0)
    model = build_model("mlp")
    (metrics,) = fit(model, make_optimizer(model.parameters(), "sgd", 0.05, 0.9), data, 1, 64, 1000, torch.Generator())
    assert isinstance(metrics, EpochMetrics)
    assert (metrics.val_loss, metrics.val_acc) == evaluate(model, data.val_x, data.val_y, 1000)
    assert {"val_loss", "val_acc", "test_acc"} <= metrics.as_dict().keys() and "Val Acc" in metrics.log_line()
