"""Where the tracking store is, whether it can be used, and which login it takes: the one parser of store URIs.

A URI is ``sqlite:///<path>``, a tracking server (``http(s)://``), or a database server MLflow
logs to directly (``postgresql+psycopg://user:password@host:port/db``). Every check fails fast
in one line naming the URI, never its password (``redact``), where MLflow itself would retry
for minutes or fail on the first write with a traceback.
"""

from __future__ import annotations

import base64
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_STORE = Path("outputs") / "mlflow.db"
SQLITE_PREFIX = "sqlite:///"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (never its password)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def resolve_tracking_uri(configured: str | None, start_dir: Path) -> str:
    """``configured`` if set, else ``MLFLOW_TRACKING_URI``, else the project's SQLite store under ``start_dir``."""
    if configured:
        return configured
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return SQLITE_PREFIX + str((start_dir / DEFAULT_STORE).resolve())


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri.removeprefix(SQLITE_PREFIX))


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def _is_file_store(tracking_uri: str) -> bool:
    """MLflow reads ``file:`` URIs and bare paths as its old file store."""
    return urllib.parse.urlparse(tracking_uri).scheme in ("", "file")


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database (``outputs/mlartifacts`` for the default store).

    Other stores (a tracking server, a file store) decide their own.
    """
    db_path = sqlite_path(tracking_uri)
    return None if db_path is None else (db_path.parent / "mlartifacts").resolve().as_uri()


def check_reachable(tracking_uri: str, timeout_seconds: float = 5.0, wait_seconds: float = 0.0) -> None:
    """Fail fast, naming the URI, when the store cannot be used (MLflow itself retries for minutes).

    ``wait_seconds``: how long an unreachable server may take to answer again (a restart) before this
    fails; a job of a running sweep waits (``SERVER_RESTART_SECONDS``), a launch does not.
    """
    if _is_file_store(tracking_uri):
        raise TrackingError(
            f"MLflow store {tracking_uri}: file stores are not supported by this MLflow; use "
            "sqlite:///<dir>/mlflow.db (`mlflow migrate-filestore` moves existing runs into one)"
        )
    if is_server(tracking_uri):
        url = tracking_uri.rstrip("/") + "/health"
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
                    response.read()
                break
            except (urllib.error.URLError, OSError) as error:
                if time.monotonic() >= deadline:
                    reason = getattr(error, "reason", error)
                    raise TrackingError(f"MLflow tracking server {tracking_uri} is unreachable: {reason}") from None
                time.sleep(2)
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"MLflow store {tracking_uri}: cannot create {db_path.parent}: {error}") from None
    check_login(tracking_uri, timeout_seconds)


# Logins and secrets (the team setup: docs/team.md).
# user:password@ in any URL-like string (a database URL, a server URL): the password goes.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@", re.IGNORECASE)
# A server restart (the team server comes back within about 15 s on 2 cores): what a sweep's job waits for
# before it fails as unreachable; within a run, MLflow's client retries (7 times, exponential backoff) instead.
SERVER_RESTART_SECONDS = 120
DATABASE_DIALECTS = ("postgresql", "mysql", "mssql")  # SQLAlchemy URLs MLflow takes as a store besides sqlite


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def is_database(tracking_uri: str) -> bool:
    """A database server MLflow logs to directly (``postgresql+psycopg://user:password@host:port/db``)."""
    return urllib.parse.urlsplit(tracking_uri).scheme.split("+")[0] in DATABASE_DIALECTS


def check_login(tracking_uri: str, timeout_seconds: float = 5.0) -> None:
    """Fail fast, naming the URI (never its password), when the store refuses this process's login.

    A server's login comes from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (or
    ``MLFLOW_TRACKING_TOKEN``), a database's from its URL; MLflow itself would retry for minutes
    or fail on the first write with a traceback.
    """
    if is_server(tracking_uri):
        _check_server_login(tracking_uri, timeout_seconds)
    elif is_database(tracking_uri):
        _check_database_login(tracking_uri, timeout_seconds)


def _check_server_login(tracking_uri: str, timeout_seconds: float) -> None:
    request = urllib.request.Request(tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            response.read()
    except urllib.error.HTTPError as error:
        who = f"user '{user}'" if user else "requests without a login"
        if error.code == 401:
            refused = f"the login of user '{user}'" if user else "requests without a login"
            raise TrackingError(
                f"MLflow tracking server {tracking_uri} refused {refused} (401 Unauthorized): "
                "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        if error.code == 403:
            raise TrackingError(f"MLflow tracking server {tracking_uri}: {who} may not read experiments") from None
        # any other answer (an older server, a proxy's page) is MLflow's to interpret on the first real call
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"MLflow tracking server {tracking_uri} is unreachable: {reason}") from None


def _check_database_login(tracking_uri: str, timeout_seconds: float) -> None:
    import sqlalchemy  # MLflow's own dependency; imported here so other stores never pay for it

    connect_args = {"connect_timeout": max(1, int(timeout_seconds))} if tracking_uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(tracking_uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except (ImportError, sqlalchemy.exc.ArgumentError) as error:
        raise TrackingError(
            f"MLflow store {redact(tracking_uri)}: {redact(str(error))} (psycopg, PostgreSQL's driver, comes "
            "with `pip install 'lenet_sweep[team]'`)"
        ) from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = " ".join(str(getattr(error, "orig", None) or error).split())
        raise TrackingError(f"MLflow store {redact(tracking_uri)} refused the connection: {redact(reason)}") from None
    finally:
        engine.dispose()


def store_exists(tracking_uri: str) -> bool:
    """False only for a SQLite store whose file is missing (nothing was ever logged there)."""
    db_path = sqlite_path(tracking_uri)
    return db_path is None or db_path.exists()
