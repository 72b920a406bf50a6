import gzip
import shutil

import pytest
import torch
from conftest import DATA

from lenet_sweep.config import MNIST_MD5
from lenet_sweep.data import (
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    Split,
    balanced_subset,
    export_png_dir,
    load_idx_split,
    load_png_dir,
    to_model_input,
)
from lenet_sweep.datasets import load_mnist

TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(root=str(DATA))


def test_shapes_dtypes_and_label_counts(mnist):
    assert mnist.train.images.shape == (60_000, 28, 28) and mnist.train.images.dtype == torch.uint8
    assert mnist.test.images.shape == (10_000, 28, 28) and mnist.test.images.dtype == torch.uint8
    assert mnist.train.labels.dtype == torch.int64 and mnist.train.labels.shape == (60_000,)
    assert torch.bincount(mnist.test.labels).tolist() == TEST_LABEL_COUNTS


def test_uncompressed_files_load_too(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(DATA / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    split = load_idx_split(tmp_path, "test", MNIST_MD5)
    assert len(split) == 10_000


def test_corrupted_copy_fails_loudly_naming_the_file(tmp_path):
    raw = bytearray(gzip.decompress((DATA / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    shutil.copy(DATA / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*md5"):
        load_idx_split(tmp_path, "test", MNIST_MD5)


def test_missing_files_name_the_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.*{tmp_path}"):
        load_idx_split(tmp_path, "train", MNIST_MD5)


def test_png_directory_round_trip(mnist, tmp_path):
    subset = Split(mnist.test.images[:50], mnist.test.labels[:50])
    export_png_dir(subset, tmp_path / "test")
    assert (tmp_path / "test" / f"0_{subset.labels[0].item()}.png").is_file()
    loaded, md5 = load_png_dir(tmp_path / "test")
    assert torch.equal(loaded.images, subset.images) and torch.equal(loaded.labels, subset.labels)
    assert len(md5) == 50 and all(len(v) == 32 for v in md5.values())


def test_subsets_are_balanced_and_reproducible(mnist):
    first = balanced_subset(mnist.train.labels, 1_000, seed=0)
    again = balanced_subset(mnist.train.labels, 1_000, seed=0)
    other = balanced_subset(mnist.train.labels, 1_000, seed=1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.bincount(mnist.train.labels[first]).tolist() == [100] * 10
    uneven = balanced_subset(mnist.test.labels, 205, seed=0)
    assert sorted(torch.bincount(mnist.test.labels[uneven]).tolist()) == [20] * 5 + [21] * 5


def test_load_mnist_applies_limits(mnist):
    small = load_mnist(root=str(DATA), train_limit=500, test_limit=100)
    assert (len(small.train), len(small.test)) == (500, 100)
    assert torch.bincount(small.test.labels).tolist() == [10] * 10


def test_normalisation_is_the_writeups(mnist):
    x = to_model_input(mnist.test.images[:2])
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    expected = (mnist.test.images[:2].float() / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(x.squeeze(1), expected)
