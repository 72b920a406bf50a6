"""The team setup on loopback for tests and benchmarks: a PostgreSQL server (scripts/postgres-local.sh) and
the authenticated ``mlflow server`` on it (scripts/mlflow_team_server.py).

Each is stopped exactly: PostgreSQL by the script's ``stop`` (pg_ctl on its own data directory), the
tracking server by its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.cli import REPO
from tests.helpers.services import serving, stop_process_group

POSTGRES_SCRIPT = REPO / "scripts" / "postgres-local.sh"


def postgres_missing_reason() -> str | None:
    """Why the local PostgreSQL cannot run here, or None when it can."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        return "PostgreSQL not installed: apt-get install postgresql, or run .ci/run, which installs it"
    if os.geteuid() == 0:
        try:
            subprocess.run(["id", "postgres"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return "running as root, but there is no `postgres` user to run the server as"
    return None


def postgres_local(action: str, state_dir: Path, timeout_seconds: float = 120) -> subprocess.CompletedProcess:
    """``scripts/postgres-local.sh <action>`` with its state in ``state_dir``."""
    return subprocess.run(
        ["bash", str(POSTGRES_SCRIPT), action],
        env={**os.environ, "PG_LOCAL_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
    )


def exports_of(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of a script's output, as a dict."""
    return dict(re.findall(r"^export (\w+)=(\S+)$", stdout, re.MULTILINE))


def reachable_state_dir(prefix: str) -> Path:
    """A fresh directory under /tmp that the `postgres` user can traverse (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o711)
    return path


@dataclass
class Postgres:
    state_dir: Path
    uris: dict[str, str]  # PG_MLFLOW_URI, PG_MLFLOW_AUTH_URI, PG_OPTUNA_URI

    def stop(self) -> None:
        result = postgres_local("stop", self.state_dir)
        assert result.returncode == 0, f"postgres-local.sh stop failed:\n{result.stdout}\n{result.stderr}"
        shutil.rmtree(self.state_dir, ignore_errors=True)


def start_postgres(prefix: str = "lenet-sweep-pg-") -> Postgres:
    """A fresh local PostgreSQL in its own state directory; ``stop()`` stops it and removes the directory."""
    state_dir = reachable_state_dir(prefix)
    result = postgres_local("start", state_dir)
    if result.returncode != 0:
        postgres_local("stop", state_dir)
        raise RuntimeError(f"postgres-local.sh start failed:\n{result.stdout}\n{result.stderr}")
    return Postgres(state_dir, exports_of(result.stdout))


@dataclass
class TeamServer:
    process: subprocess.Popen
    uri: str
    state_dir: Path
    jobs_env: dict[str, str]  # MLFLOW_TRACKING_URI / USERNAME / PASSWORD for jobs
    admin_password: str

    def stop(self) -> None:
        stop_process_group(self.process)


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def start_team_server(
    postgres: Postgres, state_dir: Path, artifacts_dir: Path, port: int, log_path: Path, env: dict | None = None
) -> TeamServer:
    """The team server (one web worker) on ``postgres``'s databases, on 127.0.0.1:``port``, healthy."""
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.mlflow_team_server",
                "--backend-store-uri",
                postgres.uris["PG_MLFLOW_URI"],
                "--auth-db-uri",
                postgres.uris["PG_MLFLOW_AUTH_URI"],
                "--state-dir",
                str(state_dir),
                "--artifacts-destination",
                str(artifacts_dir),
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ if env is None else env),
            start_new_session=True,
        )
    uri = serving(process, f"http://127.0.0.1:{port}")
    secrets = _env_file(state_dir / "secrets.env")
    return TeamServer(process, uri, state_dir, _env_file(state_dir / "jobs.env"), secrets["ADMIN_PASSWORD"])
