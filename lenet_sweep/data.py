"""The data files' formats: IDX files (verified against md5 sums) and the writeup's PNG directories.

Everything is held in memory as tensors: uint8 images ``[N, 28, 28]`` and int64
labels ``[N]``. ``to_model_input`` turns images into the normalised float batch
layout the models take. Which data set, where its files are and how a run records
it is ``datasets``' concern.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The writeup's normalisation of MNIST, to_model_input's default (conf/data/ gives each data set's).
from lenet_sweep.config import MNIST_MEAN, MNIST_STD

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
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


def find_idx_file(directory: Path, name: str) -> Path | None:
    """``directory/name.gz`` or ``directory/name``, whichever exists; None if neither."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, expected_md5: str) -> np.ndarray:
    """Read one IDX file (gzip'd or not), check the md5 of its decompressed bytes, return its array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    actual = hashlib.md5(raw).hexdigest()
    if actual != expected_md5:
        raise DataError(
            f"{path}: md5 of the decompressed data is {actual}, expected {expected_md5} "
            "(a corrupted copy, or another data set's file?)"
        )
    magic, count = struct.unpack(">II", raw[:8])
    if magic == IMAGE_MAGIC:
        rows, cols = struct.unpack(">II", raw[8:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    if magic == LABEL_MAGIC:
        return np.frombuffer(raw, dtype=np.uint8, offset=8)
    raise DataError(f"{path}: not an IDX image or label file (magic {magic})")


def load_idx_split(directory: Path, split: str, md5: Mapping[str, str]) -> Split:
    """The ``train`` or ``test`` split from the IDX files in ``directory``, each checked against ``md5[file name]``."""
    arrays = []
    for name in IDX_FILES[split]:
        path = find_idx_file(directory, name)
        if path is None:
            raise DataError(f"{name}[.gz] not found in {directory}")
        if name not in md5:
            raise DataError(f"data.md5 gives no md5 sum for {name}")
        arrays.append(read_idx(path, md5[name]))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def load_png_dir(directory: Path) -> tuple[Split, dict[str, str]]:
    """Load the writeup's format: one grey-level PNG per image, named ``{index}_{label}.png``.

    Returns the split and the md5 of each file read, by file name.
    """
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
    images, md5 = [], {}
    for _, _, path in entries:
        raw = path.read_bytes()
        md5[path.name] = hashlib.md5(raw).hexdigest()
        images.append(np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.uint8))
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    return Split(torch.from_numpy(np.stack(images)), torch.from_numpy(labels)), md5


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


def limit_split(split: Split, limit: int | None, seed: int) -> Split:
    """``split`` cut to a class-balanced subset of ``limit`` samples (``balanced_subset``); whole if None or larger."""
    if limit is None or limit >= len(split):
        return split
    keep = balanced_subset(split.labels, limit, seed)
    return Split(split.images[keep], split.labels[keep])


def split_off(split: Split, size: int, seed: int) -> tuple[Split, Split]:
    """``split`` as (the rest, a held-out class-balanced subset of ``size`` samples, ``balanced_subset``).

    Raises ``DataError`` when ``size`` leaves nothing to train on.
    """
    if size >= len(split):
        raise DataError(f"data.val_size={size}: must be smaller than the training set ({len(split)} samples)")
    held_out = balanced_subset(split.labels, size, seed)
    rest = torch.ones(len(split), dtype=torch.bool)
    rest[held_out] = False
    return Split(split.images[rest], split.labels[rest]), Split(split.images[held_out], split.labels[held_out])


def to_model_input(
    images: torch.Tensor, device: torch.device | str = "cpu", mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> torch.Tensor:
    """Normalised float32 ``[N, 1, 28, 28]`` on ``device`` (``(x / 255 - mean) / std``), ready to slice batches from."""
    x = images.to(device).unsqueeze(1).float().div_(255.0)
    return x.sub_(mean).div_(std)
