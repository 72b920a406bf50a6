"""Shared helpers: drive the real CLI in a subprocess against a real MLflow store in a temp dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.services import free_port, start_mlflow_server, stop_process_group

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
# Small, class-balanced subsets keep CLI tests to seconds.
SMALL = ["train.epochs=1", "data.train_limit=600", "data.test_limit=200"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HYDRA_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run_cli(args: list[str], cwd: Path, module: str = "lenet_sweep", timeout: float = 300, **env: str):
    """``python -m <module> <args>`` in ``cwd``; returns the CompletedProcess (text, captured)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout,
    )


def store_uri(workdir: Path) -> str:
    """The runner's default store for a command started in ``workdir``."""
    return f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}"


def runs_of(workdir: Path, experiment: str = "lenet_sweep", children_only: bool = True):
    client = MlflowClient(store_uri(workdir))
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing in {workdir}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    if children_only:
        runs = [r for r in runs if r.data.tags.get("sweep") != "true"]
    return client, runs


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh project-like directory: ``data/`` points at the shipped MNIST, outputs go here."""
    (tmp_path / "data").symlink_to(DATA)
    return tmp_path


def _slurm_script(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "slurm-local.sh"), action],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_env():
    """A one-node SLURM cluster on loopback (scripts/slurm-local.sh), and the env to reach it.

    Reuses a cluster that is already up and leaves it running; otherwise starts one
    (installing slurm-wlm and munge when missing) and stops exactly that one afterwards.
    Skipped where it cannot be started (not root, no apt-get).
    """
    started = False
    result = _slurm_script("status", timeout=30)
    if result.returncode != 0:
        result = _slurm_script("start", timeout=600)
        if result.returncode != 0:
            sbin = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
            if os.geteuid() != 0 or shutil.which("slurmctld", path=sbin) is None:
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-3:])
                pytest.skip(f"local SLURM cluster unavailable (needs root and apt-get): {tail}")
            pytest.fail(f"slurm-local.sh start failed:\n{result.stdout}\n{result.stderr}")
        started = True
    conf = re.search(r"^export SLURM_CONF=(\S+)$", result.stdout, re.MULTILINE)
    path = re.search(r"^export PATH=(\S+):\$PATH$", result.stdout, re.MULTILINE)
    assert conf and path, f"no export lines in:\n{result.stdout}"
    env = {**os.environ, "SLURM_CONF": conf.group(1),
           "PATH": f"{path.group(1)}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    try:
        yield env
    finally:
        if started:
            stop = _slurm_script("stop", timeout=120)
            assert stop.returncode == 0, f"slurm-local.sh stop failed:\n{stop.stdout}\n{stop.stderr}"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on a free loopback port over a temporary SQLite store; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    process, uri = start_mlflow_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", free_port(), root / "server.log", env=cli_env()
    )
    try:
        yield uri
    finally:
        stop_process_group(process)


def train_steps(model, optimizer, x, y, steps: int) -> list[float]:
    """``steps`` optimizer steps on the fixed batch ``x``/``y``, as the training loop takes them; the losses."""
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
