"""Data sets as config options: where their files are found, how they are verified, and how runs record them."""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lenet_sweep.config import Config, DataConfig, register_configs
from lenet_sweep.data import IDX_FILES, DataError, Split, export_png_dir
from lenet_sweep.datasets import (
    MNIST,
    DatasetSpec,
    dataset_digest,
    load_dataset,
    locate_idx_dir,
)
from lenet_sweep.identity import config_fingerprint, flat_config, run_name
from lenet_sweep.provenance import DATA_DIGEST_TAG
from lenet_sweep.report_page import ranking_comparison
from tests.helpers.cli import DATA, REPO, run_cli, runs_of

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)"
)
TINY = ["train.epochs=1", "data.train_limit=200", "data.test_limit=100"]
FILE_NAMES = [name for names in IDX_FILES.values() for name in names]


def composed_dict(*overrides: str):
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=list(overrides))


def composed(*overrides: str) -> Config:
    return OmegaConf.to_object(composed_dict(*overrides))


def spec_of(data: DataConfig) -> DatasetSpec:
    return DatasetSpec.of(
        data.name, data.md5, data.mean, data.std, data.torchvision_class, data.system_dir, data.system_package
    )


FASHION = spec_of(composed("data=fashion_mnist").data)


def idx_copy(source: Path, target: Path) -> Path:
    """``target`` holding links to the four IDX files in ``source``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILE_NAMES:
        (target / f"{name}.gz").symlink_to(source / f"{name}.gz")
    return target


# --- the options ----------------------------------------------------------------------


def test_mnist_is_the_default_and_its_option_matches_the_schema_defaults():
    cfg = composed()
    assert cfg.data == DataConfig() and spec_of(cfg.data) == MNIST
    assert cfg.data.root == "data" and cfg.data.system_dir is None


def test_fashion_mnist_option_and_data_overrides_compose():
    data = composed("data=fashion_mnist", "data.train_limit=600", "data.root=/x").data
    assert (data.name, data.torchvision_class, data.system_dir) == ("fashion_mnist", "FashionMNIST", str(FASHION_DIR))
    assert (data.train_limit, data.root, data.format) == (600, "/x", "idx")
    assert set(data.md5) == set(FILE_NAMES) and data.md5 != DataConfig().md5


@pytest.mark.parametrize("spec", [MNIST, pytest.param(FASHION, marks=needs_fashion)], ids=lambda s: s.name)
def test_normalisation_is_the_training_pixels_mean_and_std(spec):
    """What the options' comments say: population mean/std of the training pixels in [0, 1], to 4 places."""
    directory = DATA if spec is MNIST else FASHION_DIR
    raw = gzip.decompress((directory / "train-images-idx3-ubyte.gz").read_bytes())
    pixels = np.frombuffer(raw, np.uint8, offset=16)
    counts = np.bincount(pixels, minlength=256)
    values = np.arange(256) / 255
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert (round(mean, 4), round(std, 4)) == (spec.mean, spec.std)


def test_mnist_runs_keep_their_fingerprint_other_data_sets_get_their_own():
    flat = flat_config(composed())
    added = ("data.name", "data.md5", "data.mean", "data.std", "data.torchvision_class", "data.system_")
    before_data_sets = {k: v for k, v in flat.items() if not k.startswith(added)}
    assert config_fingerprint(flat) == config_fingerprint(before_data_sets)
    fashion = flat_config(composed("data=fashion_mnist"))
    assert config_fingerprint(fashion) != config_fingerprint(flat)
    assert config_fingerprint({**flat, "data.mean": 0.5}) != config_fingerprint(flat)


def test_run_names_show_a_data_set_other_than_mnist():
    assert run_name(composed("aug=flip")) == "lenet·flip·sgd·s0"
    overrides = ("data=fashion_mnist", "aug=flip", "optimizer.lr=0.1")
    assert run_name(composed(*overrides), overrides) == "lenet·flip·sgd·s0·fashion_mnist·lr=0.1"


# --- finding and verifying the files ----------------------------------------------------


@needs_fashion
def test_fashion_mnist_loads_from_the_os_copy():
    dataset = load_dataset(FASHION)
    assert (len(dataset.train), len(dataset.test)) == (60_000, 10_000)
    assert torch.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert dataset.source == str(FASHION_DIR) and dataset.name == "fashion_mnist"
    assert dataset.digest == dataset_digest(dict(FASHION.md5)) != dataset_digest(dict(MNIST.md5))


@needs_fashion
def test_root_comes_before_the_os_copy_in_either_layout(tmp_path):
    flat = idx_copy(FASHION_DIR, tmp_path / "flat")
    assert locate_idx_dir(FASHION, flat) == flat
    torchvision_layout = idx_copy(FASHION_DIR, tmp_path / "tv" / "FashionMNIST" / "raw")
    assert locate_idx_dir(FASHION, tmp_path / "tv") == torchvision_layout
    (tmp_path / "empty").mkdir()
    assert locate_idx_dir(FASHION, tmp_path / "empty") == FASHION_DIR


def test_a_root_that_is_no_directory_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=f"data.root={tmp_path / 'nope'}: no such directory"):
        locate_idx_dir(FASHION, tmp_path / "nope")


def test_a_missing_data_set_says_where_it_looked_and_how_to_get_it(tmp_path):
    gone = DatasetSpec.of(
        "fashion_mnist",
        dict(FASHION.md5),
        FASHION.mean,
        FASHION.std,
        "FashionMNIST",
        str(tmp_path / "os"),
        "dataset-fashion-mnist",
    )
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError) as error:
        locate_idx_dir(gone, tmp_path / "root")
    message = str(error.value)
    assert "\n" not in message
    for part in (
        str(tmp_path / "root"),
        str(tmp_path / "root" / "FashionMNIST" / "raw"),
        str(tmp_path / "os"),
        "dataset-fashion-mnist",
        "data.root",
        "data.download=true",
    ):
        assert part in message
    with pytest.raises(DataError, match="data.download=true needs data.root"):
        locate_idx_dir(gone, None, download=True)


def test_another_data_sets_files_fail_their_md5_check(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: md5 .*another data set"):
        load_dataset(FASHION, root=str(idx_copy(DATA, tmp_path / "mnist")))


def test_gzipped_and_plain_copies_share_a_digest(tmp_path):
    for name in FILE_NAMES:
        with gzip.open(DATA / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert load_dataset(MNIST, root=str(tmp_path)).digest == load_dataset(MNIST, root=str(DATA)).digest


def test_png_dirs_digest_their_content(tmp_path):
    mnist = load_dataset(MNIST, root=str(DATA), test_limit=40)
    export_png_dir(mnist.test, tmp_path / "train")
    export_png_dir(Split(mnist.test.images[:20], mnist.test.labels[:20]), tmp_path / "test")
    dirs = {"train_dir": str(tmp_path / "train"), "test_dir": str(tmp_path / "test")}
    png = load_dataset(MNIST, "png_dir", **dirs)
    assert (len(png.train), len(png.test), png.source) == (40, 20, str(tmp_path))
    assert png.digest != mnist.digest
    os.utime(tmp_path / "test" / f"0_{mnist.test.labels[0].item()}.png")  # a time stamp is not content
    assert load_dataset(MNIST, "png_dir", **dirs, subset_seed=1).digest == png.digest  # (another cache entry)
    export_png_dir(Split(255 - mnist.test.images[:1], mnist.test.labels[:1]), tmp_path / "test")
    assert load_dataset(MNIST, "png_dir", **dirs, subset_seed=2).digest != png.digest


# --- end to end -------------------------------------------------------------------------


def assert_one_line_and_no_run(result, text: str, workdir: Path):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0], result.stderr[-2000:]
    assert not (workdir / "outputs" / "mlflow.db").exists() or not runs_of(workdir, children_only=False)[1]


@pytest.mark.slow  # the CLI
@pytest.mark.parametrize("case", ["bad root", "wrong md5", "missing"])
def test_bad_data_stops_a_run_with_one_line_before_it_exists(workdir, case):
    corrupt = idx_copy(DATA, workdir / "corrupt")
    (corrupt / "t10k-labels-idx1-ubyte.gz").unlink()
    raw = bytearray(gzip.decompress((DATA / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (corrupt / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    overrides, text = {
        "bad root": (["data.root=nowhere"], f"data.root={workdir / 'nowhere'}: no such directory"),
        "wrong md5": (["data.root=corrupt"], "t10k-labels-idx1-ubyte: md5 of the decompressed data"),
        "missing": (["data=fashion_mnist", "data.system_dir=absent"], "fashion_mnist: IDX files not found in"),
    }[case]
    assert_one_line_and_no_run(run_cli(overrides + TINY, workdir), text, workdir)
    # A sweep checks every job's data before its parent run exists.
    assert_one_line_and_no_run(run_cli(["-m", "seed=0,1", *overrides, *TINY], workdir), text, workdir)


@pytest.fixture(scope="module")
def two_data_set_sweep(tmp_path_factory):
    """data x model x aug, one epoch on small subsets: 12 runs."""
    workdir = tmp_path_factory.mktemp("two-data-sets")
    (workdir / "data").symlink_to(DATA)
    grid = ["-m", "data=mnist,fashion_mnist", "model=lenet,mlp,lenet_reg", "aug=none,flip"]
    result = run_cli(grid + TINY, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


@needs_fashion
def test_a_sweep_over_both_data_sets_tells_them_apart(two_data_set_sweep):
    """The issue's CI check: 12 FINISHED runs, the data sets told apart by name, param and dataset input."""
    client, runs = runs_of(two_data_set_sweep)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    digests = {"mnist": dataset_digest(dict(MNIST.md5)), "fashion_mnist": dataset_digest(dict(FASHION.md5))}
    sources = {"mnist": str(DATA), "fashion_mnist": str(FASHION_DIR)}
    seen = set()
    for run in runs:
        name = run.data.params["data.name"]
        seen.add((name, run.data.params["model.name"], run.data.params["aug.name"]))
        assert ("fashion_mnist" in run.info.run_name.split("·")) == (name == "fashion_mnist"), run.info.run_name
        assert run.data.tags[DATA_DIGEST_TAG] == digests[name]
        (data_input,) = run.inputs.dataset_inputs
        dataset = data_input.dataset
        assert (dataset.name, dataset.digest, json.loads(dataset.source)["uri"]) == (name, digests[name], sources[name])
        assert {t.key: t.value for t in data_input.tags}["train_samples"] == "200"
    assert len(seen) == 12
    assert len({r.data.tags["config_fingerprint"] for r in runs}) == 12


@pytest.mark.slow  # the CLI
@needs_fashion
def test_png_dirs_of_fashion_mnist_train_and_are_recorded_by_their_content(workdir):
    fashion = load_dataset(FASHION, test_limit=300)
    export_png_dir(Split(fashion.test.images[:200], fashion.test.labels[:200]), workdir / "png" / "train")
    export_png_dir(Split(fashion.test.images[200:], fashion.test.labels[200:]), workdir / "png" / "test")
    args = [
        "data=fashion_mnist",
        "data.format=png_dir",
        "data.train_dir=png/train",
        "data.test_dir=png/test",
        "train.epochs=1",
    ]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    _, (run,) = runs_of(workdir)
    (data_input,) = run.inputs.dataset_inputs
    assert run.info.run_name.startswith("lenet·none·sgd·s0·fashion_mnist·") and run.info.status == "FINISHED"
    assert data_input.dataset.name == "fashion_mnist" and json.loads(data_input.dataset.profile) == {
        "train_samples": 200,
        "test_samples": 100,
    }
    assert data_input.dataset.digest == run.data.tags[DATA_DIGEST_TAG] != fashion.digest


@needs_fashion
def test_the_sweep_report_groups_judges_and_ranks_per_data_set(two_data_set_sweep):
    (page,) = (two_data_set_sweep / "outputs" / "multirun").glob("*/*/report/report.md")
    text = page.read_text()
    results = text.split("## Results")[1].split("##")[0]
    table = [line for line in results.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| data.name | model.name | aug.name |")
    datasets = [line.split(" | ")[0].lstrip("| ") for line in table[1:]]
    assert datasets == ["fashion_mnist"] * 6 + ["mnist"] * 6
    findings = text.split("## Findings")[1].split("##")[0]
    assert "**On fashion_mnist:** **" in findings and "**On mnist:** **" in findings
    assert "The 6 configurations run on fashion_mnist and mnist rank " in findings


def test_ranking_comparison_says_whether_the_orders_agree():
    same = ranking_comparison({"a": ["x", "y", "z"], "b": ["x", "y", "z", "only_b"]})
    assert same == (
        "The 3 configurations run on a and b rank the same by mean test accuracy on each: a: x > y > z; b: x > y > z."
    )
    differ = ranking_comparison({"a": ["x", "y"], "b": ["y", "x"]})
    assert "rank differently" in differ and "a: x > y; b: y > x" in differ
    assert ranking_comparison({"a": ["x", "y"], "b": ["x", "z"]}) is None
