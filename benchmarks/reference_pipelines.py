"""The pipelines this project is measured against, written the usual way.

(a) the writeup's: MNIST as a directory of ``{index}_{label}.png`` files, a
Dataset that opens one PNG per sample with PIL, ``ToTensor`` + ``Normalize``
(+ ``RandomHorizontalFlip`` when training with flips), a shuffled
``DataLoader(batch_size=64)`` with default workers, and ``loss.item()`` every
batch.

(a2) PyTorch's examples: ``torchvision.datasets.MNIST`` with the same
transforms through the same kind of DataLoader.

Both train the network's own ``forward``, the writeup's module-by-module
forward, so they measure the writeup's code rather than this project's fast
path (``lenet_sweep.fast``).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms
from torchvision.datasets import MNIST

from lenet_sweep.data import IDX_FILES, MNIST_MEAN, MNIST_STD, PNG_NAME, Split, export_png_dir

BATCH_SIZE = 64


def writeup_transform(flip: bool = False) -> transforms.Compose:
    """The writeup's per-sample transform; ``flip`` adds its random horizontal flip (training only)."""
    steps = [transforms.RandomHorizontalFlip()] if flip else []
    steps += [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    return transforms.Compose(steps)


class PngDigits(Dataset):
    """The writeup's Dataset: one grey-level PNG per sample, its label taken from the file name."""

    def __init__(self, directory: Path, transform: transforms.Compose) -> None:
        entries = []
        for path in Path(directory).iterdir():
            match = PNG_NAME.match(path.name)
            if match:
                entries.append((int(match.group(1)), int(match.group(2)), path))
        entries.sort()
        self.samples = [(path, label) for _, label, path in entries]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image), label


def ensure_png_export(split: Split, directory: Path) -> Path:
    """``directory`` holding ``split`` as PNG files, exported only when missing or incomplete."""
    directory = Path(directory)
    if directory.is_dir() and sum(1 for p in directory.iterdir() if PNG_NAME.match(p.name)) == len(split):
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    export_png_dir(split, directory)
    return directory


def ensure_torchvision_raw(data_root: Path, root: Path) -> Path:
    """``root`` laid out as ``torchvision.datasets.MNIST(root, download=False)`` expects.

    The project's ``data/*.gz`` are decompressed into ``root/MNIST/raw``: torchvision
    checks its own md5 table only for downloads, and those sums are of other .gz files.
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in (n for pair in IDX_FILES.values() for n in pair):
        target = raw / name
        if not target.is_file():
            with gzip.open(Path(data_root) / f"{name}.gz", "rb") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    return Path(root)


def make_loaders(
    train_set: Dataset, test_set: Dataset, generator: torch.Generator | None = None
) -> tuple[DataLoader, DataLoader]:
    """Shuffled batch-64 training loader and unshuffled batch-64 test loader, default workers.

    ``generator`` seeds the shuffle (``shuffle=True`` with a fixed order); with a
    generator seeded like the project's loop, both visit the samples in the same order.
    """
    train = DataLoader(train_set, batch_size=BATCH_SIZE, sampler=RandomSampler(train_set, generator=generator))
    test = DataLoader(test_set, batch_size=BATCH_SIZE, shuffle=False)
    return train, test


def png_datasets(train_dir: Path, test_dir: Path, flip: bool = False) -> tuple[PngDigits, PngDigits]:
    """Pipeline (a)'s data: the writeup's PNG directories through ``PngDigits``."""
    return PngDigits(train_dir, writeup_transform(flip)), PngDigits(test_dir, writeup_transform())


def torchvision_datasets(root: Path, flip: bool = False) -> tuple[MNIST, MNIST]:
    """Pipeline (a2)'s data: ``torchvision.datasets.MNIST`` from ``root`` (see ``ensure_torchvision_raw``)."""
    return (
        MNIST(str(root), train=True, download=False, transform=writeup_transform(flip)),
        MNIST(str(root), train=False, download=False, transform=writeup_transform()),
    )


def writeup_optimizer(model: nn.Module, lr: float = 0.01, momentum: float = 0.9) -> torch.optim.SGD:
    """The writeup's optimizer: plain ``torch.optim.SGD`` with its default implementation."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> tuple[float, float]:
    """One epoch the writeup's way; returns (mean loss per sample, accuracy %)."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        logits = model(images)
        loss = criterion(logits, labels)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return loss_sum / seen, 100.0 * correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(mean loss per sample, accuracy %) on ``loader``, the writeup's way."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss_sum += criterion(logits, labels).item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return loss_sum / seen, 100.0 * correct / seen
