"""What identifies a job: its run name, its config fingerprint, its config group, and its sweep's fingerprint.

One rule decides which config keys count: those in ``NOT_COMPUTED`` say where
things are or how they are run, not what is computed, so they never separate
two runs (fingerprints), never name one (run names) and never split a report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from lenet_sweep.config import Config

NOT_COMPUTED = (
    "hydra",
    "mlflow",
    "sweep",
    "data.root",
    "data.download",
    "data.train_dir",
    "data.test_dir",
    "train.threads",
    "train.kernels",  # the same function on other operators
    # A data set's md5 sums only check its files (data.name says which it is), and where it is found.
    "data.md5",
    "data.torchvision_class",
    "data.system_dir",
    "data.system_package",
    "owner",  # owner.N: which process claimed the run the Nth time it changed hands (ownership.claim)
)
# Keys added after runs were recorded, with the value those runs had: left out of fingerprints at
# that value, so the earlier runs keep theirs and are still skipped or resumed.
ADDED_WITH_EARLIER_VALUE = {"data.name": "mnist", "data.mean": 0.1307, "data.std": 0.3081, "data.val_size": 0}


def computes(key: str) -> bool:
    """Whether config key ``key`` (``a.b.c``, or an override's key) changes what a run computes."""
    key = key.lstrip("+~")
    return not any(key == excluded or key.startswith(excluded + ".") for excluded in NOT_COMPUTED)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def flat_config(cfg: Config) -> dict[str, Any]:
    """The validated config as ``{"a.b": value}``: what a run logs as params and fingerprints."""
    return flatten(dataclasses.asdict(cfg))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_fingerprint(flat: Mapping[str, Any]) -> str:
    """A short hash of what a run computes: the config minus the ``NOT_COMPUTED`` keys.

    Keys of ``ADDED_WITH_EARLIER_VALUE`` count only where they differ from that value.
    """
    return _digest({key: value for key, value in flat.items() if computes(key) and not _earlier_value(key, value)})


def _earlier_value(key: str, value: Any) -> bool:
    return key in ADDED_WITH_EARLIER_VALUE and value == ADDED_WITH_EARLIER_VALUE[key]


GROUP_HASH_CHARS = 6  # of the seedless fingerprint: unique among the configurations that share a readable name


def config_group(flat: Mapping[str, Any]) -> str:
    """A readable tag equal across the seeds of one configuration and different between configurations.

    ``lenet·flip·sgd·3fa9c1``: model (``+regularization`` when not the model's own), augmentation,
    optimizer, the data set when not MNIST, then the start of the fingerprint of the config
    without its seed. The name alone cannot be unique (two configurations may differ only in a
    learning rate or a preset's value), so the short hash always follows it.
    """
    model = str(flat.get("model.name"))
    regularization = flat.get("model.regularization.name", "none")
    if regularization != "none" and flat.get("model.name") == flat.get("model.arch"):
        model += f"+{regularization}"
    parts = [model, str(flat.get("aug.name")), str(flat.get("optimizer.name"))]
    if flat.get("data.name", "mnist") != "mnist":
        parts.append(str(flat["data.name"]))
    seedless = config_fingerprint({key: value for key, value in flat.items() if key != "seed"})
    return "·".join([*parts, seedless[:GROUP_HASH_CHARS]])


def sweep_fingerprint(overrides: Iterable[str], sweeper_params: Mapping[str, str]) -> str:
    """A short hash of what a sweep runs: its overrides and sweeper params, minus those that change no result.

    The same command relaunched gets the same fingerprint, whichever directory
    Hydra names after the time and whichever store or launcher it uses.
    """
    settings = [o for o in overrides if computes(o.partition("=")[0])]
    settings += [f"{key}={value}" for key, value in sweeper_params.items() if computes(key)]
    return _digest(sorted(settings))


def run_name(cfg: Config, overrides: Iterable[str] = ()) -> str:
    """A name a person can read in the MLflow UI, e.g. ``lenet_reg·flip·sgd·s0``.

    A data set other than MNIST follows the seed (``lenet·flip·sgd·s0·fashion_mnist``).
    Overridden settings that change what is computed are appended by their last
    key, so an lr sweep's runs read ``lenet·none·sgd·s0·lr=0.1``; config group
    choices (``model=mlp``) already show in the first parts.
    """
    model = cfg.model.name
    if cfg.model.regularization.name != "none" and cfg.model.name == cfg.model.arch:
        model += f"+{cfg.model.regularization.name}"
    parts = [model, cfg.aug.name, cfg.optimizer.name, f"s{cfg.seed}"]
    if cfg.data.name != "mnist":  # MNIST runs keep the names they had before the data set was a choice
        parts.append(cfg.data.name)
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if "." in key and computes(key):
            parts.append(f"{key.rsplit('.', 1)[1]}={value}")
    return "·".join(parts)
