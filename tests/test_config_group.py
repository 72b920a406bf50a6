"""The ``config_group`` tag: readable in the MLflow UI's legend, equal across seeds, distinct between configurations."""

from __future__ import annotations

import re

from lenet_sweep.identity import config_group

FLAT = {
    "seed": 0,
    "model.name": "lenet",
    "model.arch": "lenet",
    "model.regularization.name": "none",
    "aug.name": "flip",
    "optimizer.name": "sgd",
    "optimizer.lr": 0.01,
    "data.name": "mnist",
}


def test_the_tag_reads_model_aug_optimizer_then_a_short_hash():
    assert re.fullmatch(r"lenet·flip·sgd·[0-9a-f]{6}", config_group(FLAT))
    dropout = {**FLAT, "model.regularization.name": "dropout"}
    assert config_group(dropout).startswith("lenet+dropout·flip·sgd·")
    preset = {**FLAT, "model.name": "lenet_reg", "model.regularization.name": "dropout_bn"}  # the model's own
    assert config_group(preset).startswith("lenet_reg·flip·sgd·")
    assert config_group({**FLAT, "data.name": "fashion_mnist"}).startswith("lenet·flip·sgd·fashion_mnist·")


def test_the_tag_is_equal_across_seeds_and_differs_where_only_a_hidden_value_differs():
    assert config_group(FLAT) == config_group({**FLAT, "seed": 7})
    other_lr = config_group({**FLAT, "optimizer.lr": 0.05})
    assert other_lr != config_group(FLAT) and other_lr.startswith("lenet·flip·sgd·")
    assert config_group({**FLAT, "mlflow.tracking_uri": "sqlite:///elsewhere.db"}) == config_group(FLAT)
