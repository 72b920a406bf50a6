"""Stress the tracking path: many tiny jobs in parallel, against each kind of store, and count what arrived.

    python -m benchmarks.stress_tracking [--jobs 64] [--parallel 8] [--epochs 2] [--stores sqlite,...]

Each store gets one joblib sweep of ``--jobs`` tiny MLP runs (seeds 0..N-1, small MNIST subsets,
one torch thread each) run ``--parallel`` at a time through the real CLI. Then it counts what the
store holds against what the sweep should have logged: child runs FINISHED and left RUNNING, metric
points, the jobs the sweep's summary counts failed or killed, "database is locked" in its output and the
first few distinct error lines jobs printed.
Stores (all on loopback, in a temporary directory):

- ``sqlite``: jobs write to one SQLite file (MLflow's defaults: rollback journal, 20 s busy timeout);
- ``sqlite-wal``: the same file in write-ahead-log mode, its experiment created before the launch;
- ``server-sqlite``: an ``mlflow server`` (one web worker) over SQLite;
- ``server-postgres``: the team server (scripts/mlflow_team_server.py: PostgreSQL, basic-auth login,
  one web worker), jobs logging in as the jobs user;
- ``server-postgres-restart``: the same, the server stopped once a quarter of the jobs finished and
  started again on the same database ``--down-seconds`` later.

Not part of CI: it needs PostgreSQL for the last two (``scripts/postgres-local.sh``) and minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.helpers.services import free_port, start_mlflow_server, stop_process_group
from tests.helpers.team import Postgres, TeamServer, start_postgres, start_team_server

REPO = Path(__file__).resolve().parents[1]
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds")
STORES = ("sqlite", "sqlite-wal", "server-sqlite", "server-postgres", "server-postgres-restart")
SUMMARY = re.compile(r"Sweep summary: \d+ jobs: (\d+) finished, (\d+) failed, (\d+) killed")


@dataclass
class Outcome:
    store: str
    exit_code: int
    wall_seconds: float
    finished: int
    running: int
    points: int
    job_errors: int  # failed + killed in the sweep's summary; every job when there is no summary
    locked_lines: int  # output lines saying "database is locked"


def sweep_command(tracking_uri: str, experiment: str, jobs: int, parallel: int, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lenet_sweep",
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={parallel}",
        "model=mlp",
        f"seed=range(0,{jobs})",
        f"train.epochs={epochs}",
        "train.threads=1",
        "data.train_limit=200",
        "data.test_limit=100",
        f"data.root={REPO / 'data'}",
        f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.experiment={experiment}",
    ]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HYDRA_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_sweep(workdir: Path, command: list[str], env: dict[str, str], during=None) -> tuple[int, float, str]:
    """Run the sweep in ``workdir`` (``during(process)`` in a thread meanwhile); exit code, wall seconds, output."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    helper = threading.Thread(target=during, args=(process,), daemon=True) if during else None
    if helper:
        helper.start()
    output, _ = process.communicate()
    if helper:
        helper.join()
    return process.returncode, time.perf_counter() - started, output


def count(tracking_uri: str, experiment_name: str) -> tuple[int, int, int]:
    """(child runs FINISHED, child runs RUNNING, metric points across the child runs) in the experiment."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0, 0, 0
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=5000)
        if r.data.tags.get("sweep") != "true"
    ]
    finished = sum(r.info.status == "FINISHED" for r in runs)
    running = sum(r.info.status == "RUNNING" for r in runs)
    points = sum(len(client.get_metric_history(r.info.run_id, key)) for r in runs for key in METRICS)
    return finished, running, points


def error_lines(output: str, most: int = 3) -> list[str]:
    """The first ``most`` distinct lines of ``output`` that report an error (what jobs saw)."""
    found = dict.fromkeys(line.strip() for line in output.splitlines() if "error" in line.lower())
    return list(found)[:most]


def outcome(store: str, code: int, seconds: float, output: str, tracking_uri: str, jobs: int) -> Outcome:
    summary = SUMMARY.search(output)
    job_errors = int(summary.group(2)) + int(summary.group(3)) if summary else jobs
    locked = sum("database is locked" in line for line in output.splitlines())
    return Outcome(store, code, seconds, *count(tracking_uri, experiment_of(store)), job_errors, locked)


def prepare_wal_store(db_path: Path) -> str:
    """A SQLite store with its tables and experiment created and write-ahead logging on; its URI."""
    uri = f"sqlite:///{db_path}"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(uri).create_experiment(
        experiment_of("sqlite-wal"), artifact_location=(db_path.parent / "mlartifacts").as_uri()
    )
    with sqlite3.connect(db_path) as connection:  # the journal mode is stored in the file: every writer uses it
        assert connection.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    return uri


def restart_when_a_quarter_finished(
    server: list[TeamServer], postgres: Postgres, root: Path, jobs: int, down_seconds: float, events: list[str]
):
    """A ``during`` callback: stop the team server once jobs/4 child runs FINISHED, start it again later."""

    def during(process: subprocess.Popen) -> None:
        while process.poll() is None:
            finished = finished_quietly(server[0].uri, experiment_of("server-postgres-restart"))
            if finished >= jobs // 4:
                break
            time.sleep(3)
        if process.poll() is not None:
            return
        port = int(server[0].uri.rsplit(":", 1)[1])
        stop_process_group(server[0].process)
        events.append(f"server stopped after {finished} runs finished")
        time.sleep(down_seconds)
        server[0] = start_team_server(postgres, root / "state", root / "artifacts", port, root / "server.log")
        events.append(f"server back after {down_seconds:.0f} s down")

    return during


def finished_quietly(uri: str, experiment_name: str) -> int:
    """Child runs FINISHED so far; 0 while the server does not answer."""
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return 0
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
        return sum(r.data.tags.get("sweep") != "true" for r in runs)
    except Exception:  # the server is restarting: try again later
        return 0


def experiment_of(store: str) -> str:
    """Each store's sweep has its own experiment (the two PostgreSQL ones share a database)."""
    return f"stress_{store.replace('-', '_')}"


def run_store(store: str, root: Path, args, postgres: Postgres | None) -> tuple[Outcome, list[str]]:
    command = lambda uri: sweep_command(uri, experiment_of(store), args.jobs, args.parallel, args.epochs)  # noqa: E731
    events: list[str] = []
    root.mkdir(parents=True)
    if store in ("sqlite", "sqlite-wal"):
        db = root / "mlflow.db"
        uri = prepare_wal_store(db) if store == "sqlite-wal" else f"sqlite:///{db}"
        code, seconds, output = run_sweep(root, command(uri), clean_env())
        return outcome(store, code, seconds, output, uri, args.jobs), error_lines(output)
    if store == "server-sqlite":
        server, uri = start_mlflow_server(
            f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", free_port(), root / "server.log", clean_env()
        )
        try:
            code, seconds, output = run_sweep(root / "work", command(uri), clean_env())
            return outcome(store, code, seconds, output, uri, args.jobs), error_lines(output)
        finally:
            stop_process_group(server)
    assert postgres is not None
    server = [start_team_server(postgres, root / "state", root / "artifacts", free_port(), root / "server.log")]
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=server[0].admin_password)
    try:
        during = None
        if store == "server-postgres-restart":
            during = restart_when_a_quarter_finished(server, postgres, root, args.jobs, args.down_seconds, events)
        code, seconds, output = run_sweep(
            root / "work", command(server[0].uri), clean_env(**server[0].jobs_env), during
        )
        return outcome(store, code, seconds, output, server[0].uri, args.jobs), events + error_lines(output)
    finally:
        server[0].stop()
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, of {', '.join(STORES)}")
    parser.add_argument("--down-seconds", type=float, default=10, help="how long the restarted server stays down")
    args = parser.parse_args()
    stores = args.stores.split(",")
    unknown = sorted(set(stores) - set(STORES))
    if unknown:
        parser.error(f"unknown stores {', '.join(unknown)}; choose from {', '.join(STORES)}")
    expected_points = args.jobs * args.epochs * len(METRICS)
    rows, notes = [], []
    postgres = start_postgres("lenet-sweep-stress-pg-") if any("postgres" in s for s in stores) else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for store in stores:
                result, events = run_store(store, Path(tmp) / store, args, postgres)
                rows.append(result)
                notes += [f"{store}: {event}" for event in events]
                print(f"done: {result}", file=sys.stderr, flush=True)
    finally:
        if postgres is not None:
            postgres.stop()
    print(f"{args.jobs} jobs x {args.epochs} epochs, {args.parallel} at a time (joblib, 1 torch thread each)")
    print(
        "| store | exit | wall s | runs FINISHED (expected) | left RUNNING | metric points (expected) "
        "| jobs failed or killed | 'database is locked' lines |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.store} | {r.exit_code} | {r.wall_seconds:.1f} | {r.finished} ({args.jobs}) | {r.running} "
            f"| {r.points} ({expected_points}) | {r.job_errors} | {r.locked_lines} |"
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
