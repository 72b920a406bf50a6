"""Typed schemas for the Hydra config tree in ``conf/``.

YAML groups are merged onto these dataclasses, so a value of the wrong type
fails at composition time. Range checks run in ``__post_init__`` when the task
converts its config to objects (``OmegaConf.to_object``), before any data is
loaded, and name the offending key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

OPTIMIZER_NAMES = ("sgd", "adam")
DATA_FORMATS = ("idx", "png_dir")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "bf16")
KERNEL_MODES = ("auto", "on", "off")
SKIP_FINISHED_MODES = ("config", "code", "never")
SKIP_FINISHED_ALIASES = {"true": "config", "false": "never"}
# The default data set's values, as conf/data/mnist.yaml gives them.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class ConfigError(ValueError):
    """A config value that is well-typed but out of range; the message names the key."""


def _require(condition: bool, key: str, value: Any, expectation: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r}: {expectation}")


@dataclass
class RegularizationConfig:
    name: str = "none"
    # Dropout probability after the last hidden layer's activation; 0 disables it.
    dropout: float = 0.0
    batchnorm: bool = False

    def __post_init__(self) -> None:
        _require(0.0 <= self.dropout < 1.0, "model.regularization.dropout", self.dropout, "must be in [0, 1)")


@dataclass
class ModelConfig:
    name: str = "lenet"
    # Which network to build; lenet_reg is lenet with the dropout_bn regularization.
    arch: str = "lenet"
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)

    def __post_init__(self) -> None:
        _require(self.arch in ("lenet", "mlp"), "model.arch", self.arch, "must be one of lenet, mlp")


@dataclass
class AugConfig:
    name: str = "none"
    # Probability of a horizontal flip per training sample; 0 disables augmentation.
    hflip_p: float = 0.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.hflip_p <= 1.0, "aug.hflip_p", self.hflip_p, "must be in [0, 1]")


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.01
    # SGD only; Adam keeps its default betas.
    momentum: float | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(self.name in OPTIMIZER_NAMES, "optimizer.name", self.name, "must be one of sgd, adam")
        _require(self.lr > 0, "optimizer.lr", self.lr, "must be > 0")
        if self.name == "adam":
            _require(self.momentum is None, "optimizer.momentum", self.momentum, "applies to sgd only")
        else:
            momentum = self.momentum or 0.0
            _require(0.0 <= momentum < 1.0, "optimizer.momentum", self.momentum, "must be in [0, 1)")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class DataConfig:
    # Which data set: an option of the data group (conf/data/) fills in these seven.
    name: str = "mnist"
    # md5 of each of the four IDX files' decompressed bytes, by file name.
    md5: dict[str, str] = field(default_factory=lambda: dict(MNIST_MD5))
    # Normalisation: (pixel / 255 - mean) / std, from the training images.
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    # torchvision.datasets class that downloads it (data.download=true).
    torchvision_class: str = "MNIST"
    # Where the operating system's package puts the files, and that package's name.
    system_dir: str | None = None
    system_package: str | None = None
    format: str = "idx"
    # Directory holding the four IDX files (gzip'd or not), looked in before the OS copy;
    # relative paths are taken from the directory the command was started in.
    root: str | None = "data"
    download: bool = False
    train_dir: str | None = None
    test_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    # Seed of the class-balanced subset; fixed so every run of a sweep sees the same subset.
    subset_seed: int = 0
    # Validation samples held out of the training set (class-balanced, seed data.subset_seed, taken
    # before data.train_limit cuts the rest) and never trained on; 0: no validation split.
    val_size: int = 0

    def __post_init__(self) -> None:
        _require(bool(self.name), "data.name", self.name, "must not be empty")
        _require(self.std > 0, "data.std", self.std, "must be > 0")
        _require(self.format in DATA_FORMATS, "data.format", self.format, "must be one of idx, png_dir")
        for key in ("train_limit", "test_limit"):
            limit = getattr(self, key)
            _require(limit is None or limit >= 10, f"data.{key}", limit, "must be null or >= 10 (one per class)")
        _require(self.val_size == 0 or self.val_size >= 10, "data.val_size", self.val_size, "must be 0 or >= 10")
        if self.format == "png_dir":
            _require(self.train_dir is not None, "data.train_dir", None, "is required with data.format=png_dir")
            _require(self.test_dir is not None, "data.test_dir", None, "is required with data.format=png_dir")


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    eval_batch_size: int = 1000
    # Torch intra-op threads; 0 lets the runner choose (cores / parallel jobs).
    threads: int = 0
    amp: str = "off"
    compile: bool = False
    # LeNet-5's conv blocks as C kernels on the CPU: auto (where a timing on this machine, cached,
    # shows them faster), on (wherever they apply; an error if they cannot be built) or off.
    kernels: str = "auto"

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, "must be a positive integer")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be a positive integer")
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, "must be a positive integer")
        _require(self.threads >= 0, "train.threads", self.threads, "must be >= 0 (0 = automatic)")
        _require(self.amp in AMP_MODES, "train.amp", self.amp, "must be one of off, bf16")
        _require(self.kernels in KERNEL_MODES, "train.kernels", self.kernels, "must be one of auto, on, off")


@dataclass
class MlflowConfig:
    # null: MLFLOW_TRACKING_URI, else sqlite:///<start dir>/outputs/mlflow.db
    tracking_uri: str | None = None
    experiment: str = "lenet_sweep"

    def __post_init__(self) -> None:
        _require(bool(self.experiment), "mlflow.experiment", self.experiment, "must not be empty")


@dataclass
class SweepConfig:
    # Skip a job that already has a FINISHED run in the experiment with the same config and data
    # (`config`), and also the same commit, both trees clean (`code`), or never skip (`never`).
    # true/false, the older spelling, mean config/never.
    skip_finished: str = "config"
    # Print what each job of the sweep would do (skip, new, resume) and exit, creating no run.
    plan: bool = False
    # Continue a KILLED/FAILED run with the same fingerprint from its checkpoint.
    resume: bool = True
    # A RUNNING run counts as orphaned (and is closed KILLED) once its heartbeat, stamped every
    # minute (six times per window at least) while its owner lives, is this much older; an owner
    # whose heartbeat has failed for half of it stops itself first.
    orphan_after_minutes: float = 10.0

    def __post_init__(self) -> None:
        self.skip_finished = SKIP_FINISHED_ALIASES.get(str(self.skip_finished).lower(), self.skip_finished)
        _require(
            self.skip_finished in SKIP_FINISHED_MODES,
            "sweep.skip_finished",
            self.skip_finished,
            "must be one of config, code, never (or true/false)",
        )
        _require(
            self.orphan_after_minutes > 0,
            "sweep.orphan_after_minutes",
            self.orphan_after_minutes,
            "must be > 0",
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _require(self.device in DEVICES, "device", self.device, "must be one of auto, cpu, cuda")


def check_known_keys(values: Mapping[str, Any], schema: type = Config, prefix: str = "") -> None:
    """Raise ``ConfigError`` naming the first key of ``values`` that no field of ``schema`` reads.

    Hydra's ``+key=value`` adds keys even to a typed config, and converting to
    the dataclasses would silently drop them: a misspelt ``+train.epoch=3``
    would train with the default.
    """
    hints = get_type_hints(schema)
    fields = {f.name for f in dataclasses.fields(schema)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"{path}: unknown key, nothing reads it (`python -m lenet_sweep --cfg job` lists the keys)"
            )
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            check_known_keys(value, hints[key], f"{path}.")


def job_config(job: DictConfig) -> Config:
    """The typed config of a composed job config (its ``hydra`` node left out); ``ConfigError`` naming a key
    that no field reads, as ``check_known_keys`` does, and OmegaConf's errors for bad values."""
    values = OmegaConf.masked_copy(job, [key for key in job if key != "hydra"])
    check_known_keys(OmegaConf.to_container(values))
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), values))


def one_line(error: BaseException) -> str:
    """Hydra's multi-line composition errors as one line: what failed, why, and the valid options."""
    text = str(error)
    if error.__cause__ is not None:
        text = text.split("\n\n")[0] + "\n" + str(error.__cause__)
    headline = [line.strip() for line in text.split("\n\n")[0].splitlines() if line and not line[0].isspace()]
    options = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
    if options:
        headline.append("choose from " + ", ".join(o.strip() for o in options.group(1).splitlines()))
    return ": ".join(headline)


def register_configs() -> None:
    """Register the schema that ``conf/config.yaml`` extends, so every merge is type-checked."""
    ConfigStore.instance().store(name="base_config", node=Config)
