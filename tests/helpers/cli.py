"""Drive the real CLI in a subprocess against a real MLflow store in a temporary directory, and read it back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
# Small, class-balanced subsets keep CLI tests to seconds.
SMALL = ["train.epochs=1", "data.train_limit=600", "data.test_limit=200"]
# An Optuna search on the same subsets with a validation split: the MLP learns in an epoch of 600 images,
# so a hopeless learning rate shows at once.
SMALL_SEARCH = [
    "-m",
    "hydra/sweeper=optuna",
    "model=mlp",
    "data.train_limit=600",
    "data.test_limit=200",
    "data.val_size=200",
    "train.threads=1",
]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HYDRA_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run_cli(args: list[str], cwd: Path, module: str = "lenet_sweep", timeout: float = 300, **env: str):
    """``python -m <module> <args>`` in ``cwd``; returns the CompletedProcess (text, captured)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
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


def start_cli(args, workdir, **env: str) -> subprocess.Popen:
    """The CLI in its own process group (so the test can stop exactly it and its workers), output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "lenet_sweep", *args],
        cwd=workdir,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def has_runs(db: Path) -> bool:
    """Whether the CLI has created a run: only then is the schema complete, so opening the store migrates nothing."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return connection.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    except sqlite3.OperationalError:  # the tables are still being created
        return False


def wait_for_runs(workdir, process, ready, timeout_s=240):
    """Poll the store until ``ready(client, child_runs)`` holds; the child runs then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the CLI ended before the test could interrupt it"
        if has_runs(workdir / "outputs" / "mlflow.db"):
            client, runs = runs_of(workdir)
            if runs and ready(client, runs):
                return runs
        time.sleep(0.2)
    raise AssertionError("the runs never reached the awaited state")


@contextmanager
def store_locked(workdir: Path):
    """Inside, the SQLite store under ``workdir`` is locked (``BEGIN EXCLUSIVE``): every job blocks at its next
    read or write, so a kill sent inside lands mid-run, however long an epoch takes."""
    with sqlite3.connect(workdir / "outputs" / "mlflow.db", timeout=60) as lock:
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.rollback()
