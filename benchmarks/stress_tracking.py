"""Stress the tracking path: N tiny jobs in parallel, against SQLite and against an MLflow server.

    python -m benchmarks.stress_tracking [--jobs 24] [--parallel 4] [--epochs 3]

Each store gets one joblib sweep of ``--jobs`` tiny runs (seeds 0..N-1, small MNIST
subsets) run ``--parallel`` at a time through the real CLI. Then it counts what the
store holds: runs FINISHED and metric points, expected against found. Not part of CI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.helpers.services import free_port, start_mlflow_server, stop_process_group

REPO = Path(__file__).resolve().parents[1]
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds")


def run_sweep(workdir: Path, tracking_uri: str, jobs: int, parallel: int, epochs: int) -> tuple[int, float]:
    command = [
        sys.executable,
        "-m",
        "lenet_sweep",
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={parallel}",
        "model=mlp",
        f"seed=range(0,{jobs})",
        f"train.epochs={epochs}",
        "data.train_limit=200",
        "data.test_limit=100",
        f"data.root={REPO / 'data'}",
        f"mlflow.tracking_uri={tracking_uri}",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    return result.returncode, time.perf_counter() - started


def count(tracking_uri: str) -> tuple[int, int]:
    """(FINISHED child runs, metric points across them) in the store."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("lenet_sweep")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=5000)
        if r.data.tags.get("sweep") != "true"
    ]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    points = sum(len(client.get_metric_history(r.info.run_id, key)) for r in runs for key in METRICS)
    return len(finished), points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    expected_points = args.jobs * args.epochs * len(METRICS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sqlite_uri = f"sqlite:///{root / 'sqlite' / 'mlflow.db'}"
        (root / "sqlite").mkdir()
        code, seconds = run_sweep(root / "sqlite", sqlite_uri, args.jobs, args.parallel, args.epochs)
        rows.append(("sqlite", code, seconds, *count(sqlite_uri)))
        (root / "server").mkdir()
        server, server_uri = start_mlflow_server(
            f"sqlite:///{root / 'server' / 'mlflow.db'}",
            root / "server" / "artifacts",
            free_port(),
            root / "server" / "server.log",
        )
        try:
            code, seconds = run_sweep(root / "server", server_uri, args.jobs, args.parallel, args.epochs)
            rows.append(("server", code, seconds, *count(server_uri)))
        finally:
            stop_process_group(server)
    print(f"{args.jobs} jobs x {args.epochs} epochs, {args.parallel} in parallel (joblib)")
    print("| store | exit | wall s | runs FINISHED (expected) | metric points (expected) |")
    print("| --- | --- | --- | --- | --- |")
    for store, code, seconds, finished, points in rows:
        print(f"| {store} | {code} | {seconds:.1f} | {finished} ({args.jobs}) | {points} ({expected_points}) |")


if __name__ == "__main__":
    main()
