"""Start-up time and per-epoch bookkeeping of real runs, read back from the MLflow store (issue 5).

Runs ``python -m lenet_sweep`` ``--runs`` times (LeNet-5, full MNIST,
``--epochs`` epochs, a fresh SQLite store in a temporary directory, the first
run untimed so that files and imports are warm) and reads each run's metrics
back. Every epoch's metrics carry the wall-clock time they were logged at, so

  start-up   = (epoch 1 logged at) - epoch_seconds[1] - (command launched at):
               imports, config composition, store checks, data decoding, model;
  bookkeeping = (epoch e logged at) - (epoch e-1 logged at) - epoch_seconds[e]:
               per epoch, the checkpoint, the MLflow request and the log line,
               as a share of the epoch's own time.

Nothing in the runner is patched or switched off for this: it is the runner as
users run it. Prints a table and writes ``<out>/overhead.json``.

    python benchmarks/overhead.py [--runs 3] [--epochs 3] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from lenet_sweep.config import MlflowConfig

REPO = Path(__file__).resolve().parents[1]


def run_once(workdir: Path, epochs: int) -> dict:
    """One CLI run into ``workdir``'s store; the launch time and the logged epochs."""
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "lenet_sweep",
        "model=lenet",
        f"train.epochs={epochs}",
        f"mlflow.tracking_uri={store}",
        "sweep.skip_finished=false",
        "sweep.resume=false",
        f"hydra.run.dir={workdir / 'run'}",
    ]
    launched = time.time()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(MlflowConfig().experiment)
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    history = sorted(client.get_metric_history(run.info.run_id, "epoch_seconds"), key=lambda m: m.step)
    return {"launched_s": launched, "epochs": [(m.step, m.timestamp / 1000, m.value) for m in history]}


def measure(run: dict) -> dict:
    epochs = run["epochs"]
    _, first_logged, first_seconds = epochs[0]
    startup_s = first_logged - first_seconds - run["launched_s"]
    bookkeeping = [
        (logged - previous_logged - seconds, seconds)
        for (_, previous_logged, _), (_, logged, seconds) in zip(epochs, epochs[1:])
    ]
    return {
        "startup_s": startup_s,
        "bookkeeping_s": [b for b, _ in bookkeeping],
        "epoch_s": [s for _, s in bookkeeping],
        "bookkeeping_share": [b / s for b, s in bookkeeping],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs, after one untimed warm-up run")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (at least 2)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: bookkeeping is measured between epochs")
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="lenet-sweep-overhead-") as tmp:
        run_once(Path(tmp), args.epochs)
        for i in range(args.runs):
            results.append(measure(run_once(Path(tmp), args.epochs)))
            r = results[-1]
            print(
                f"run {i + 1}: start-up {r['startup_s']:.2f} s, bookkeeping per epoch "
                + ", ".join(
                    f"{b * 1000:.0f} ms ({share:.2%})" for b, share in zip(r["bookkeeping_s"], r["bookkeeping_share"])
                ),
                flush=True,
            )

    startup = [r["startup_s"] for r in results]
    shares = [s for r in results for s in r["bookkeeping_share"]]
    bookkeeping_ms = [b * 1000 for r in results for b in r["bookkeeping_s"]]
    summary = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)),
        "runs": args.runs,
        "epochs": args.epochs,
        "startup_s": {"min": min(startup), "median": statistics.median(startup), "max": max(startup)},
        "bookkeeping_ms": {"median": statistics.median(bookkeeping_ms), "max": max(bookkeeping_ms)},
        "bookkeeping_share": {"median": statistics.median(shares), "max": max(shares)},
        "results": results,
    }
    print(
        f"\nstart-up (command to first batch): median {summary['startup_s']['median']:.2f} s "
        f"(min {min(startup):.2f}, max {max(startup):.2f})"
    )
    print(
        f"bookkeeping per epoch (checkpoint + MLflow + log line): median {summary['bookkeeping_ms']['median']:.0f} ms "
        f"= {summary['bookkeeping_share']['median']:.2%} of an epoch (max {summary['bookkeeping_share']['max']:.2%})"
    )
    path = args.out / "overhead.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
