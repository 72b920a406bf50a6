"""Which data set a run reads, where its files are found, and how the run records it.

A data set is an option of the ``data`` config group (``conf/data/``): its name, the
md5 sums of its four IDX files, its normalisation, and where its files are looked
for: ``data.root`` (the files themselves, or torchvision's ``<root>/<Class>/raw``
layout), then the operating system's copy, then torchvision's download into
``data.root`` when ``data.download=true``. ``data.format=png_dir`` reads the
writeup's PNG directories instead, for any data set.

A loaded data set carries its *digest*, a hash of the md5 sums of the files read,
which the run records as an MLflow dataset input and (``provenance``) as the tag ``data_digest``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lenet_sweep.config import MNIST_MD5, MNIST_MEAN, MNIST_STD
from lenet_sweep.data import (
    IDX_FILES,
    DataError,
    Split,
    find_idx_file,
    limit_split,
    load_idx_split,
    load_png_dir,
    split_off,
)

# The MLflow input tag that says what a run used the data set for (mlflow.utils.mlflow_tags).
CONTEXT_TAG = "mlflow.data.context"


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as its ``conf/data/`` option describes it (hashable, so loads can be cached)."""

    name: str
    md5: tuple[tuple[str, str], ...]  # (IDX file name, md5 of its decompressed bytes)
    mean: float
    std: float
    torchvision_class: str  # torchvision.datasets class that downloads it
    system_dir: str | None = None  # where the operating system's package puts the files
    system_package: str | None = None

    @classmethod
    def of(
        cls,
        name: str,
        md5: Mapping[str, str],
        mean: float,
        std: float,
        torchvision_class: str,
        system_dir: str | None = None,
        system_package: str | None = None,
    ) -> DatasetSpec:
        return cls(name, tuple(sorted(md5.items())), mean, std, torchvision_class, system_dir, system_package)


# MNIST as conf/data/mnist.yaml describes it, for code that loads it without a config.
MNIST = DatasetSpec.of("mnist", MNIST_MD5, MNIST_MEAN, MNIST_STD, "MNIST")


@dataclass(frozen=True)
class LoadedDataset:
    name: str
    train: Split
    test: Split
    digest: str  # dataset_digest of the files read, whatever the subset
    source: str  # the directory the files were read from
    file_samples: tuple[int, int]  # train and test samples in the files, before any subset
    val: Split | None = None  # held out of the training files (data.val_size), never trained on


def dataset_digest(file_md5s: Mapping[str, str]) -> str:
    """A short hash of a data set's content: of its files' md5 sums, by file name.

    For IDX files, which are verified against the config's sums, this is
    ``dataset_digest(data.md5)`` and known before reading them; gzip'd and plain
    copies of the same files share it.
    """
    return hashlib.sha256(json.dumps(sorted(file_md5s.items())).encode()).hexdigest()[:16]


def _how_to_get(spec: DatasetSpec) -> str:
    package = f"install the package {spec.system_package}, or " if spec.system_package else ""
    return (
        f"{package}set data.root to a directory holding its four IDX files "
        f"(with data.download=true, torchvision's {spec.torchvision_class} downloads them there)"
    )


def _holds_idx_files(directory: Path) -> bool:
    return any(find_idx_file(directory, name) for names in IDX_FILES.values() for name in names)


def _download(spec: DatasetSpec, root: Path) -> Path:
    import torchvision.datasets  # only needed on machines that may download

    root.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=train, download=True)
    except Exception as error:  # no network, a mirror gone, a bad class name: one line, before any run
        reason = " ".join(str(error).split())  # torchvision's message spans lines
        raise DataError(f"{spec.name}: download into {root} failed: {type(error).__name__}: {reason}") from None
    return root / spec.torchvision_class / "raw"


def locate_idx_dir(spec: DatasetSpec, root: Path | None, download: bool = False) -> Path:
    """The directory holding ``spec``'s IDX files: ``root``, torchvision's layout under it, the OS copy, a download.

    Raises ``DataError`` in one line saying where it looked and how to get the files;
    a ``root`` that is not a directory is an error unless it is to be downloaded into.
    """
    if root is not None and not root.is_dir() and not download:
        raise DataError(f"data.root={root}: no such directory ({spec.name}: {_how_to_get(spec)})")
    candidates = [root, root / spec.torchvision_class / "raw"] if root is not None else []
    if spec.system_dir:
        candidates.append(Path(spec.system_dir))
    for directory in candidates:
        if _holds_idx_files(directory):
            return directory
    if download and root is not None:
        return _download(spec, root)
    looked = ", ".join(map(str, candidates)) or "nowhere (data.root is null and no OS copy is known)"
    no_target = "data.download=true needs data.root, where to download; " if download else ""
    raise DataError(f"{spec.name}: IDX files not found in {looked}; {no_target}{_how_to_get(spec)}")


@functools.lru_cache(maxsize=4)
def load_dataset(
    spec: DatasetSpec,
    fmt: str = "idx",
    root: str | None = None,
    download: bool = False,
    train_dir: str | None = None,
    test_dir: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    subset_seed: int = 0,
    val_size: int = 0,
) -> LoadedDataset:
    """Load ``spec`` in ``fmt`` (``idx`` or ``png_dir``), optionally cut to class-balanced subsets.

    With ``val_size``, that many training samples (class-balanced, seeded by ``subset_seed``) are
    held out as the validation split before ``train_limit`` cuts the rest: the validation split is
    the same whatever the training subset. Cached per process: a multirun's jobs in one process
    decode the files once.
    """
    if fmt == "idx":
        directory = locate_idx_dir(spec, None if root is None else Path(root), download)
        md5 = dict(spec.md5)
        train, test = (load_idx_split(directory, split, md5) for split in ("train", "test"))
        source, digest = str(directory), dataset_digest(md5)
    elif fmt == "png_dir":
        train, train_md5 = load_png_dir(Path(train_dir))
        test, test_md5 = load_png_dir(Path(test_dir))
        file_md5s = {
            f"{split}/{name}": md5
            for split, md5s in (("train", train_md5), ("test", test_md5))
            for name, md5 in md5s.items()
        }
        source, digest = os.path.commonpath([train_dir, test_dir]), dataset_digest(file_md5s)
    else:
        raise DataError(f"unknown data format {fmt!r}")
    file_samples = (len(train), len(test))
    val = None
    if val_size:
        train, val = split_off(train, val_size, subset_seed)
    return LoadedDataset(
        spec.name,
        limit_split(train, train_limit, subset_seed),
        limit_split(test, test_limit, subset_seed),
        digest,
        source,
        file_samples,
        val,
    )


def load_mnist(root: str = "data", **options) -> LoadedDataset:
    """MNIST from ``root`` (the project's copy by default) with ``load_dataset``'s options.

    For code that has no config: scripts, benchmarks and tests.
    """
    return load_dataset(MNIST, root=root, **options)


def log_dataset_input(runs, run_id: str, dataset: LoadedDataset) -> None:
    """Record ``dataset`` as the run's MLflow dataset input in the ``store.Store`` ``runs``.

    The input (shown on the run's page in the UI) has the data set's name, digest,
    source directory and, as its profile, the samples in the files; its input tags
    give the samples this run used (``data.train_limit``/``test_limit`` may cut them).
    ``provenance`` tags the run with the digest too.
    """
    train_samples, test_samples = dataset.file_samples
    runs.log_dataset_input(
        run_id,
        name=dataset.name,
        digest=dataset.digest,
        source=json.dumps({"uri": dataset.source}),  # as mlflow.data's local sources write it
        profile=json.dumps({"train_samples": train_samples, "test_samples": test_samples}),
        input_tags={
            CONTEXT_TAG: "train+test",
            "train_samples": str(len(dataset.train)),
            "test_samples": str(len(dataset.test)),
            **({} if dataset.val is None else {"val_samples": str(len(dataset.val))}),
        },
    )
