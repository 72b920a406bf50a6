"""MNIST loading: IDX files (verified against the official md5 sums) or the writeup's PNG directories.

Everything is held in memory as tensors: uint8 images ``[N, 28, 28]`` and int64
labels ``[N]``. ``to_model_input`` turns images into the normalised float batch
layout the models take. Decoded splits are cached per process, so every job of
a multirun in one process decodes the files once.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# The writeup's normalisation: scale to [0, 1], subtract the mean, divide by the std.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# Official md5 sums of the decompressed IDX files (see data/README.md).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
PNG_NAME = re.compile(r"^(\d+)_(\d)\.png$")


class DataError(RuntimeError):
    """The data set cannot be read or fails verification; the message names the file."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Mnist:
    train: Split
    test: Split


def _find_idx_file(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name, root / "MNIST" / "raw" / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file {name}[.gz] not found in {root} (set data.root, or data.download=true)")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip'd or not), check its md5 against the official sum, return its array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    name = path.name.removesuffix(".gz")
    expected = IDX_MD5.get(name)
    actual = hashlib.md5(raw).hexdigest()
    if expected is not None and actual != expected:
        raise DataError(f"{path}: md5 of the decompressed data is {actual}, expected {expected} (corrupted copy?)")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == IMAGE_MAGIC:
        rows, cols = struct.unpack(">II", raw[8:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    if magic == LABEL_MAGIC:
        return np.frombuffer(raw, dtype=np.uint8, offset=8)
    raise DataError(f"{path}: not an IDX image or label file (magic {magic})")


def _download(root: Path) -> None:
    from torchvision.datasets import MNIST  # only needed on machines that may download

    root.mkdir(parents=True, exist_ok=True)
    MNIST(str(root), train=True, download=True)
    MNIST(str(root), train=False, download=True)


def load_idx_split(root: Path, split: str, download: bool = False) -> Split:
    """Load the ``train`` or ``test`` split from the IDX files under ``root``."""
    image_name, label_name = IDX_FILES[split]
    try:
        image_path = _find_idx_file(root, image_name)
    except DataError:
        if not download:
            raise
        _download(root)
        image_path = _find_idx_file(root, image_name)
    images = read_idx(image_path)
    labels = read_idx(_find_idx_file(root, label_name))
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def load_png_dir(directory: Path) -> Split:
    """Load the writeup's format: one grey-level PNG per image, named ``{index}_{label}.png``."""
    from PIL import Image

    if not directory.is_dir():
        raise DataError(f"PNG directory {directory} does not exist")
    entries = []
    for path in directory.iterdir():
        match = PNG_NAME.match(path.name)
        if match:
            entries.append((int(match.group(1)), int(match.group(2)), path))
    if not entries:
        raise DataError(f"{directory} holds no files named {{index}}_{{label}}.png")
    entries.sort()
    images = np.stack([np.asarray(Image.open(path).convert("L"), dtype=np.uint8) for _, _, path in entries])
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def export_png_dir(split: Split, directory: Path) -> None:
    """Write ``split`` as the writeup's PNG directory (``{index}_{label}.png``)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(split.images.numpy(), split.labels.tolist())):
        Image.fromarray(image, mode="L").save(directory / f"{index}_{label}.png")


def balanced_subset(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Indices of a fixed, seeded subset of ``limit`` samples with classes as equal as the data allows."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    quota = [limit // len(classes) + (1 if i < limit % len(classes) else 0) for i in range(len(classes))]
    chosen = torch.cat([idx[:q] for idx, q in zip(per_class, quota)])
    return chosen.sort().values


def _limit(split: Split, limit: Optional[int], seed: int) -> Split:
    if limit is None or limit >= len(split):
        return split
    keep = balanced_subset(split.labels, limit, seed)
    return Split(split.images[keep], split.labels[keep])


@functools.lru_cache(maxsize=4)
def load_mnist(
    fmt: str = "idx",
    root: str = "data",
    download: bool = False,
    train_dir: Optional[str] = None,
    test_dir: Optional[str] = None,
    train_limit: Optional[int] = None,
    test_limit: Optional[int] = None,
    subset_seed: int = 0,
) -> Mnist:
    """Load MNIST in ``fmt`` (``idx`` or ``png_dir``), optionally cut to class-balanced subsets.

    Cached per process: a multirun's jobs in one process decode the files once.
    """
    if fmt == "idx":
        train = load_idx_split(Path(root), "train", download)
        test = load_idx_split(Path(root), "test", download)
    elif fmt == "png_dir":
        train = load_png_dir(Path(train_dir))
        test = load_png_dir(Path(test_dir))
    else:
        raise DataError(f"unknown data format {fmt!r}")
    return Mnist(_limit(train, train_limit, subset_seed), _limit(test, test_limit, subset_seed))


def to_model_input(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised float32 ``[N, 1, 28, 28]`` on ``device``, ready to slice batches from."""
    x = images.to(device).unsqueeze(1).float().div_(255.0)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD)
