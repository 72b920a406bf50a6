"""The tool as a user installs it: a built wheel, apart from the checkout, run from an empty directory."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import DATA, REPO, SMALL, cli_env, runs_of

pytestmark = pytest.mark.slow  # builds and installs a wheel, runs the CLI from it


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> str:
    """The project's wheel installed with ``pip install --target`` into a fresh directory; that directory."""
    source = tmp_path_factory.mktemp("source")  # setuptools builds in the source tree: a copy keeps the checkout clean
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for name in ("lenet_sweep", "conf", "hydra_plugins"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheel_dir = tmp_path_factory.mktemp("wheel")
    site = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, source],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("lenet_sweep-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", site, wheel], check=True, capture_output=True, timeout=300
    )
    return str(site)


def test_a_wheel_install_runs_a_job_from_an_empty_directory(installed_wheel, tmp_path):
    env = cli_env(PYTHONPATH=installed_wheel)
    where = subprocess.run(
        [sys.executable, "-c", "import lenet_sweep; print(lenet_sweep.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(installed_wheel), "the test must run the installed copy, not the checkout"

    result = subprocess.run(
        [sys.executable, "-m", "lenet_sweep", *SMALL, f"data.root={DATA}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = runs_of(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params["model.name"] == "lenet"
    if shutil.which("cc"):  # the wheel carries the kernels' C sources: they build and train.kernels=auto times them
        assert "train.kernels=auto: train=" in result.stdout + result.stderr, result.stderr[-3000:]


def test_the_wheel_carries_the_sweepers_and_the_launcher_and_hydra_finds_them(installed_wheel, tmp_path):
    plugins = Path(installed_wheel) / "hydra_plugins"
    assert not (plugins / "__init__.py").exists(), "hydra_plugins must stay a namespace package"
    for package in ("lenet_sweep_seeds", "lenet_sweep_optuna", "lenet_sweep_packed"):
        assert (plugins / package / "__init__.py").is_file(), package
    info = subprocess.run(
        [sys.executable, "-m", "lenet_sweep", "--info", "plugins"],
        cwd=tmp_path,
        env=cli_env(PYTHONPATH=installed_wheel),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr[-3000:]
    for plugin in ("SeedsSweeper", "OptunaSweeper", "PackedLauncher"):
        assert plugin in info.stdout, info.stdout[-3000:]
