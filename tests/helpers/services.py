"""Processes started on loopback for tests, benchmarks and docs: ``mlflow server``/``ui`` and headless Chromium.

Each runs in its own session, so stopping it stops exactly the processes it
started (web workers included), by process group id; never a kill by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

# A fresh, quiet headless Chromium that runs as root and never reaches beyond loopback.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_seconds: float = 120) -> None:
    """Return once ``url`` answers; raise if ``process`` exits first or the time runs out."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_seconds} s")


def start_mlflow(
    command: str,
    backend_store_uri: str,
    port: int,
    log_path: Path,
    extra_args: Sequence[str] = (),
    env: dict | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` or ``mlflow ui`` on 127.0.0.1:``port`` with one web worker and no
    background job runner, wait until it is healthy; return (process, base URL)."""
    env = dict(os.environ if env is None else env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                backend_store_uri,
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return process, serving(process, f"http://127.0.0.1:{port}")


def serving(process: subprocess.Popen, uri: str) -> str:
    """``uri`` once the MLflow server ``process`` answers there; the server stopped (by its group) if it never does."""
    try:
        wait_for_http(f"{uri}/health", process)
    except BaseException:
        stop_process_group(process)
        raise
    return uri


def start_mlflow_server(
    backend_store_uri: str, artifacts_dir: Path, port: int, log_path: Path, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """A tracking server that also serves artifacts from ``artifacts_dir``."""
    artifacts = ["--artifacts-destination", str(artifacts_dir)]
    return start_mlflow("server", backend_store_uri, port, log_path, artifacts, env)


def start_optuna_dashboard(storage_url: str, port: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``optuna-dashboard`` over an Optuna storage on 127.0.0.1:``port`` (its own session); (process, base URL)
    once its API answers; the dashboard stopped (by its group) if it never does."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "optuna-dashboard"),
                storage_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/api/meta", process)
    except BaseException:
        stop_process_group(process)
        raise
    return process, base


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies don't count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 15) -> None:
    """Stop the process we started and its whole group: SIGTERM, then SIGKILL after ``grace_seconds``."""
    pgid = process.pid  # started with start_new_session: the leader's pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_seconds
    while (process.poll() is None or _group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process.poll() is None or _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


@contextmanager
def paused(process: subprocess.Popen):
    """Inside, every process of ``process``'s group is stopped (SIGSTOP): a server that takes connections
    and never answers, as an overloaded or hung one does; continued (SIGCONT) on the way out."""
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(args: Sequence[str], profile: Path, timeout_seconds: float = 60) -> str:
    """Run headless Chromium with a fresh profile and ``args``; return its stdout ('' on timeout)."""
    browser = subprocess.Popen(
        [find_chromium() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = browser.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        stop_process_group(browser, grace_seconds=2)
    return out
