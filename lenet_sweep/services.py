"""Start and stop a local ``mlflow server`` on loopback (tests, benchmarks, ``make mlflow-server``).

The server runs in its own session so that stopping it stops exactly the
processes it started (its web workers included), by process group id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional


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


def start_mlflow_server(
    backend_store_uri: str, artifacts_dir: Path, port: int, log_path: Path, env: Optional[dict] = None
) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on 127.0.0.1:``port``, wait until it is healthy; return (process, URI)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process)
    except BaseException:
        stop_process_group(process)
        raise
    return process, uri


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop the process we started and its children (its own session): SIGTERM, then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
