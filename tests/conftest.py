"""Fixtures: a project-like working directory, a local SLURM cluster, an MLflow tracking server.

Helpers the tests share live in ``tests/helpers/`` (imported as ``tests.helpers.<module>``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import DATA, REPO, cli_env
from tests.helpers.services import free_port, start_mlflow_server, stop_process_group

# What scripts/slurm-local.sh needs (packages slurm-wlm and munge); installing them is .ci/run's job.
SLURM_COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch")


# The test files that use the one local SLURM cluster (the session fixture ``slurm_env``).
SLURM_TEST_FILES = ("tests/test_slurm_local.py", "tests/test_slurm_sweep.py", "tests/test_team_server.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs two pytest-xdist workers: each test file on one worker, so its module fixtures (a
    filled store, a server) are built once, and the SLURM files together, on one cluster started once."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "slurm" if path in SLURM_TEST_FILES else path

    return FileScheduling(config, log)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh project-like directory: ``data/`` points at the shipped MNIST, outputs go here."""
    (tmp_path / "data").symlink_to(DATA)
    return tmp_path


def _slurm_script(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm-local.sh"), action], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm_env():
    """A one-node SLURM cluster on loopback (scripts/slurm-local.sh), and the env to reach it.

    Reuses a cluster that is already up and leaves it running; otherwise starts one and stops
    exactly that one afterwards. Skipped, saying why, where slurm-wlm and munge are not installed
    or the tests do not run as root (the cluster runs SlurmUser=root).
    """
    started = False
    result = _slurm_script("status", timeout=30)
    if result.returncode != 0:
        sbin = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        missing = [c for c in SLURM_COMMANDS if shutil.which(c, path=sbin) is None]
        if missing:
            pytest.skip(
                f"SLURM not installed (no {', '.join(missing)}): "
                "apt-get install slurm-wlm munge, or run .ci/run, which installs them"
            )
        if os.geteuid() != 0:
            pytest.skip("the local SLURM cluster runs as root (SlurmUser=root); these tests do not")
        result = _slurm_script("start", timeout=120)
        if result.returncode != 0:
            pytest.fail(f"slurm-local.sh start failed:\n{result.stdout}\n{result.stderr}")
        started = True
    conf = re.search(r"^export SLURM_CONF=(\S+)$", result.stdout, re.MULTILINE)
    path = re.search(r"^export PATH=(\S+):\$PATH$", result.stdout, re.MULTILINE)
    assert conf and path, f"no export lines in:\n{result.stdout}"
    env = {
        **os.environ,
        "SLURM_CONF": conf.group(1),
        "PATH": f"{path.group(1)}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
    }
    try:
        yield env
    finally:
        if started:
            stop = _slurm_script("stop", timeout=120)
            assert stop.returncode == 0, f"slurm-local.sh stop failed:\n{stop.stdout}\n{stop.stderr}"


@pytest.fixture(scope="module")
def mlflow_server_process(tmp_path_factory):
    """A real ``mlflow server`` on a free loopback port over a temporary SQLite store; yields (process, URI)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    process, uri = start_mlflow_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", free_port(), root / "server.log", env=cli_env()
    )
    try:
        yield process, uri
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def mlflow_server(mlflow_server_process):
    """The URI of the module's ``mlflow server``."""
    return mlflow_server_process[1]
