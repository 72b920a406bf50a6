"""Issue 20's targets on a GPU, command to exit: whole sweeps through the CLI with ``hydra/launcher=packed``.

    python benchmarks/packed_gpu_cli.py [--out DIR] [--device cuda] [--epochs 15] [--joblib-jobs 8]

Each sweep runs ``python -m lenet_sweep -m ...`` in a fresh working directory (a fresh SQLite store,
the repository's data linked in), is timed from the command to its exit, and is read back from its store
(runs FINISHED, final test accuracies):

1. ``make sweep``'s grid (model=lenet,mlp,lenet_reg x aug=none,flip: 6 runs), packed;
2. the writeup's study (``experiment=writeup``: 12 runs), packed;
3. 64 LeNet-5 jobs (8 learning rates x 8 momenta), packed;
4. the same 64 jobs as joblib processes sharing the card (``--joblib-jobs`` at once), stopped after
   ``--factor`` times the packed sweep's time, or when ``--budget-s`` from the start is near (then the
   figure is a bound, not a measurement: packed is at least that many times faster).

``train_seconds`` is the packs' training (their epochs' summed ``epoch_seconds``); the rest of the command's
time is start-up, composing and checking the jobs, MLflow bookkeeping, figures and the sweep's report.

Results go to ``DIR/packed_gpu_cli.json`` and are printed as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LRS = "0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2"
MOMENTA = "0.0,0.5,0.7,0.8,0.9,0.95,0.97,0.99"
SWEEPS = {
    "grid6": ["model=lenet,mlp,lenet_reg", "aug=none,flip"],
    "writeup12": ["experiment=writeup"],
    "grid64": ["model=lenet", f"optimizer.lr={LRS}", f"optimizer.momentum={MOMENTA}"],
}


def read_back(db: Path) -> dict:
    """Runs by status and the final test accuracies of the finished ones, straight from the SQLite store."""
    if not db.exists():
        return {"statuses": {}, "train_seconds": 0.0}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        statuses = dict(
            connection.execute(
                "SELECT status, count(*) FROM runs WHERE run_uuid NOT IN "
                "(SELECT run_uuid FROM tags WHERE key = 'sweep' AND value = 'true') GROUP BY status"
            ).fetchall()
        )
        accuracies = [
            row[0]
            for row in connection.execute(
                "SELECT value FROM latest_metrics JOIN runs USING (run_uuid) "
                "WHERE key = 'test_acc' AND status = 'FINISHED'"
            )
        ]
        # A pack's members log the pack's epoch time, so distinct per-run totals are the packs' training times.
        run_train_seconds = [
            row[0]
            for row in connection.execute(
                "SELECT sum(value) FROM metrics WHERE key = 'epoch_seconds' GROUP BY run_uuid"
            )
        ]
    result = {"statuses": statuses, "train_seconds": sum({round(s, 3) for s in run_train_seconds})}
    if accuracies:
        result.update(test_acc_min=min(accuracies), test_acc_max=max(accuracies))
    return result


def timed_sweep(args: list[str], timeout_s: float | None) -> dict:
    """``python -m lenet_sweep -m <args>`` in a fresh directory: seconds to exit (or to the timeout) and its runs."""
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "data").symlink_to(REPO / "data")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "lenet_sweep", "-m", *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: a timeout stops exactly it and its workers
        )
        try:
            output, _ = process.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            seconds = time.perf_counter() - started
            os.killpg(process.pid, signal.SIGTERM)  # the jobs end their runs KILLED
            try:
                output, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
        if not timed_out:
            seconds = time.perf_counter() - started
        result = {"seconds": seconds, "returncode": process.returncode, "timed_out": timed_out}
        result.update(read_back(Path(workdir) / "outputs" / "mlflow.db"))
        if process.returncode != 0 and not timed_out:
            result["output_tail"] = output[-3000:]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--joblib-jobs", type=int, default=8)
    parser.add_argument("--factor", type=float, default=3.0, help="stop the joblib sweep after this x packed's time")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="stop the joblib sweep by then")
    parser.add_argument("overrides", nargs="*", help="more overrides for every sweep (data.train_limit=600 to try it)")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"device={args.device}", f"train.epochs={args.epochs}", *args.overrides]
    results: dict[str, dict] = {}

    def record(name: str, result: dict) -> None:
        results[name] = result
        bound = " (stopped: at least this)" if result["timed_out"] else ""
        print(
            f"{name:<14} {result['seconds']:7.1f} s{bound} (training {result['train_seconds']:.1f} s)  "
            f"exit {result['returncode']}  runs {result['statuses']}  "
            f"test acc {result.get('test_acc_min', float('nan')):.2f}-{result.get('test_acc_max', float('nan')):.2f}",
            flush=True,
        )
        if "output_tail" in result:
            print(result["output_tail"], flush=True)
        (args.out / "packed_gpu_cli.json").write_text(json.dumps(results, indent=2))

    def left_s() -> float:
        return args.budget_s - (time.perf_counter() - started) - 35  # room to stop a sweep and read it back

    for name, sweep in SWEEPS.items():
        record(f"{name} packed", timed_sweep(["hydra/launcher=packed", *sweep, *common], left_s()))
    packed_seconds = results["grid64 packed"]["seconds"]
    joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.joblib_jobs}"]
    record(
        f"grid64 joblib{args.joblib_jobs}",
        timed_sweep([*joblib, *SWEEPS["grid64"], *common], min(args.factor * packed_seconds, left_s())),
    )


if __name__ == "__main__":
    main()
