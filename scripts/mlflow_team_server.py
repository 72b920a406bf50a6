"""The team's tracking server: ``mlflow server`` on PostgreSQL, artifacts served through it, behind a login.

    python -m scripts.mlflow_team_server [--backend-store-uri URI] [--auth-db-uri URI] [--state-dir DIR]
        [--artifacts-destination DIR] [--host 127.0.0.1] [--port 5002] [--workers N] [--allowed-hosts HOSTS]

The backend store and MLflow's login store default to ``$PG_MLFLOW_URI`` and ``$PG_MLFLOW_AUTH_URI``
(``scripts/postgres-local.sh start`` prints both), else to those of the running local PostgreSQL.
Before the server starts, the state directory gets (mode 0600, kept across restarts, random the first time):

- ``secrets.env``: the Flask secret key, the admin's and the jobs user's passwords;
- ``basic_auth.ini``: MLflow's basic-auth config, its own admin password instead of none/the old default;
- ``jobs.env``: ``MLFLOW_TRACKING_URI``/``USERNAME``/``PASSWORD`` for jobs (``set -a; . jobs.env; set +a``).

The admin and the jobs user are created in the login store, or their passwords reset to the file's:
``secrets.env`` is what holds, on every start. Users see every experiment (``default_permission = READ``) and may
write to the experiments they create. Then the process becomes ``mlflow server --app-name basic-auth``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADMIN_USER = "admin"
JOBS_USER = "jobs"
DEFAULT_PORT = 5002
AUTH_CACHE_SECONDS = 60


@dataclass(frozen=True)
class TeamSecrets:
    """What the team server needs to keep secret, as stored in ``secrets.env``."""

    flask_secret_key: str
    admin_password: str
    jobs_password: str


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def load_or_create_secrets(state_dir: Path) -> TeamSecrets:
    """The secrets in ``state_dir/secrets.env``; random ones, written there, the first time."""
    path = state_dir / "secrets.env"
    if not path.exists():
        _write_private(
            path,
            f"FLASK_SECRET_KEY={secrets.token_hex(32)}\n"
            f"ADMIN_PASSWORD={secrets.token_urlsafe(18)}\n"
            f"JOBS_PASSWORD={secrets.token_urlsafe(18)}\n",
        )
    values = _read_env_file(path)
    return TeamSecrets(values["FLASK_SECRET_KEY"], values["ADMIN_PASSWORD"], values["JOBS_PASSWORD"])


def write_auth_config(state_dir: Path, auth_db_uri: str, admin_password: str) -> Path:
    """MLflow's basic-auth config (``MLFLOW_AUTH_CONFIG_PATH``): login store, admin, default permission."""
    path = state_dir / "basic_auth.ini"
    _write_private(
        path,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {auth_db_uri}\n"
        f"admin_username = {ADMIN_USER}\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without the cache every request re-hashes the password (about 1 s per request on a busy
        # 2-core machine, measured); with it, a password changed by hand in the store is still
        # accepted for up to this long (changes through the server's API take effect at once).
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n",
    )
    return path


def ensure_users(auth_db_uri: str, passwords: dict[str, str], admins: set[str]) -> None:
    """Create each user of ``passwords`` in the login store, or reset its password (and admin flag) to these."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_db_uri)  # creates or migrates the login store's tables
    try:
        for username, password in passwords.items():
            if store.has_user(username, use_primary=True):
                store.update_user(username, password=password, is_admin=username in admins)
            else:
                store.create_user(username, password, is_admin=username in admins)
    finally:
        store.engine.dispose()


def write_jobs_env(state_dir: Path, server_uri: str, jobs_password: str) -> Path:
    """The environment a job logs to the server with (MLflow's client reads these variables)."""
    path = state_dir / "jobs.env"
    _write_private(
        path,
        f"MLFLOW_TRACKING_URI={server_uri}\n"
        f"MLFLOW_TRACKING_USERNAME={JOBS_USER}\n"
        f"MLFLOW_TRACKING_PASSWORD={jobs_password}\n",
    )
    return path


def prepare(
    backend_store_uri: str,
    auth_db_uri: str,
    state_dir: Path,
    artifacts_destination: Path,
    host: str,
    port: int,
    workers: int | None,
    allowed_hosts: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Write the state directory's files, create the jobs user; return the server's argv and environment."""
    state_dir.mkdir(parents=True, exist_ok=True)
    team_secrets = load_or_create_secrets(state_dir)
    auth_config = write_auth_config(state_dir, auth_db_uri, team_secrets.admin_password)
    passwords = {ADMIN_USER: team_secrets.admin_password, JOBS_USER: team_secrets.jobs_password}
    ensure_users(auth_db_uri, passwords, admins={ADMIN_USER})
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    write_jobs_env(state_dir, f"http://{client_host}:{port}", team_secrets.jobs_password)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--artifacts-destination",
        str(artifacts_destination),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if workers:
        argv += ["--workers", str(workers)]
    if allowed_hosts:  # MLflow's security middleware answers only these Host headers (loopback by default)
        argv += ["--allowed-hosts", allowed_hosts]
    env = dict(
        os.environ,
        # through the environment, not argv: a command line (and the database password in it) is public in `ps`
        MLFLOW_BACKEND_STORE_URI=backend_store_uri,
        MLFLOW_AUTH_CONFIG_PATH=str(auth_config),
        MLFLOW_FLASK_SERVER_SECRET_KEY=team_secrets.flask_secret_key,
    )
    # MLflow's background job runner serves GenAI features this project does not use; it costs a process.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # Never inherit a login meant for a client, nor an admin password that would override the file's.
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        env.pop(key, None)
    return argv, env


def local_postgres_uris() -> dict[str, str]:
    """The export lines of a running ``scripts/postgres-local.sh`` (``PG_LOCAL_DIR`` picks which); {} if none."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres-local.sh"), "status"], capture_output=True, text=True, timeout=30
    )
    return dict(re.findall(r"^export (\w+)=(\S+)$", result.stdout, re.MULTILINE)) if result.returncode == 0 else {}


def _store_uri(given: str | None, variable: str, flag: str) -> str:
    """``given``, else ``$variable``, else what the local PostgreSQL of scripts/postgres-local.sh serves."""
    uri = given or os.environ.get(variable) or local_postgres_uris().get(variable)
    if uri:
        return uri
    sys.exit(f"error: {flag} not given, ${variable} not set and no scripts/postgres-local.sh server running")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", help="default: $PG_MLFLOW_URI, else the local PostgreSQL's")
    parser.add_argument("--auth-db-uri", help="MLflow's login store; default: $PG_MLFLOW_AUTH_URI, likewise")
    parser.add_argument("--state-dir", type=Path, default=REPO / "outputs" / "team-server")
    parser.add_argument("--artifacts-destination", type=Path, default=REPO / "outputs" / "mlartifacts-team")
    parser.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback needs TLS in front")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workers", type=int, default=None, help="web workers (MLflow's default when not given)")
    parser.add_argument("--allowed-hosts", default=None, help="Host headers to answer besides loopback's (a proxy's)")
    args = parser.parse_args(argv)
    backend = _store_uri(args.backend_store_uri, "PG_MLFLOW_URI", "--backend-store-uri")
    auth_db = _store_uri(args.auth_db_uri, "PG_MLFLOW_AUTH_URI", "--auth-db-uri")
    server_argv, env = prepare(
        backend,
        auth_db,
        args.state_dir,
        args.artifacts_destination.resolve(),
        args.host,
        args.port,
        args.workers,
        args.allowed_hosts,
    )
    print(
        f"team server: http://{args.host}:{args.port}, login store and secrets in {args.state_dir}; "
        f"jobs: set -a; . {args.state_dir / 'jobs.env'}; set +a",
        flush=True,
    )
    os.execve(server_argv[0], server_argv, env)


if __name__ == "__main__":
    main()
