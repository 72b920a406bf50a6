"""The packed launcher against joblib on the same small grid, on this machine's CPU, command to exit.

    python benchmarks/packed_cpu.py [--epochs 2] [--train-limit 6000]

Runs the CLI twice in fresh working directories (fresh SQLite stores): ``hydra/launcher=packed`` and
``hydra/launcher=joblib hydra.launcher.n_jobs=2`` (what ``make sweep`` uses), each over LeNet-5 with
2 seeds x 4 learning rates on a class-balanced MNIST subset, and prints both wall times and their
ratio. On a CPU a pack does the same arithmetic as the solo jobs, without LeNet-5's fused C
kernels, so expect it to be slower here: the packed launcher pays on a GPU (docs/performance.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = ["model=lenet", "seed=0,1", "optimizer.lr=0.005,0.01,0.02,0.05"]
LAUNCHERS = {
    "packed": ["hydra/launcher=packed"],
    "joblib n_jobs=2": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}


def wall_seconds(launcher_args: list[str], epochs: int, train_limit: int) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "data").symlink_to(REPO / "data")
        args = [*launcher_args, *GRID, f"train.epochs={epochs}", f"data.train_limit={train_limit}"]
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lenet_sweep", "-m", *args], cwd=workdir, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=6000)
    args = parser.parse_args()
    print(f"{' '.join(GRID)}, {args.epochs} epochs, {args.train_limit} training images; command to exit")
    times = {name: wall_seconds(launcher, args.epochs, args.train_limit) for name, launcher in LAUNCHERS.items()}
    for name, seconds in times.items():
        print(f"{name:<16} {seconds:7.1f} s")
    print(f"packed / joblib: {times['packed'] / times['joblib n_jobs=2']:.2f}x the time")


if __name__ == "__main__":
    main()
