"""``train.kernels=auto``: whether the C kernels beat PyTorch's operators on this machine, measured once.

Both paths run a few training steps (forward, loss, backward at the run's batch
size) and evaluation batches (at the run's evaluation batch size, at most 1000)
in alternating rounds on a copy of the model, so that whatever else the machine
does falls on both alike; the kernels are chosen only where the median of the
per-round ratios says they are clearly faster (``MARGIN``). The verdict is cached
beside the compiled kernels, keyed by the kernel build (sources, compiler,
processor, instruction set), the thread count, the batch sizes and torch's version,
unless other load disturbed the rounds (``Timing.steady``): then it serves this run
only, and the next run measures again.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lenet_sweep.fast.kernels import Library, cache_dir
from lenet_sweep.fast.lenet import FastLeNet
from lenet_sweep.models import LeNet5

# The kernels must take at most this share of the operators' time to be chosen.
MARGIN = 0.9
MIN_ROUNDS, MAX_ROUNDS = 5, 15
# A path whose median round took longer than this many times its fastest was disturbed.
STEADY_SPREAD = 1.5
ROUNDS_SECONDS = 0.5  # per mode: after MIN_ROUNDS, stop once this much time went into the rounds
EVAL_BATCH_CAP = 1000


@dataclass(frozen=True)
class Timing:
    """One mode's paired rounds: milliseconds per step of each path, in round order."""

    fused_ms: list[float]
    operators_ms: list[float]

    @property
    def ratio(self) -> float:
        """Median over rounds of fused time / operators time."""
        return statistics.median(f / o for f, o in zip(self.fused_ms, self.operators_ms))

    @property
    def fused_wins(self) -> bool:
        return self.ratio < MARGIN

    @property
    def steady(self) -> bool:
        """Whether both paths' typical rounds ran near their fastest: no other load got in the way."""
        return all(statistics.median(ms) <= STEADY_SPREAD * min(ms) for ms in (self.fused_ms, self.operators_ms))

    def summary(self) -> str:
        fused, operators = statistics.median(self.fused_ms), statistics.median(self.operators_ms)
        return f"{fused:.2f} vs {operators:.2f} ms, median ratio {self.ratio:.2f} over {len(self.fused_ms)} pairs"


@dataclass(frozen=True)
class Verdict:
    train: Timing
    eval: Timing
    measured: str  # when, ISO 8601

    def describe(self, batch_size: int, eval_batch_size: int) -> str:
        return (
            f"training step at batch {batch_size}: kernels vs operators {self.train.summary()}; "
            f"evaluation at batch {min(eval_batch_size, EVAL_BATCH_CAP)}: {self.eval.summary()}"
        )


def _paired_rounds(fused: Callable[[], None], operators: Callable[[], None]) -> Timing:
    """Alternating timed calls of the two paths (the order swapped every round) after one warm-up call of each."""
    fused(), operators()
    times = {fused: [], operators: []}
    started = time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and time.perf_counter() - started > ROUNDS_SECONDS:
            break
        for step in (fused, operators) if round_index % 2 == 0 else (operators, fused):
            begin = time.perf_counter()
            step()
            times[step].append((time.perf_counter() - begin) * 1000)
    return Timing(times[fused], times[operators])


def measure(model: LeNet5, kernels: Library, batch_size: int, eval_batch_size: int) -> Verdict:
    """Time both paths on a copy of ``model`` (left untouched, as are torch's random generators)."""
    model = copy.deepcopy(model).cpu()
    fused, operators = FastLeNet(model, kernels, kernels), FastLeNet(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (batch_size,), generator=generator)
    eval_x = torch.randn(min(eval_batch_size, EVAL_BATCH_CAP), 1, 28, 28, generator=generator)
    params = list(model.parameters())

    def train_step(module: FastLeNet) -> Callable[[], None]:
        def step() -> None:
            torch.autograd.grad(F.cross_entropy(module(x), y), params)

        return step

    def eval_step(module: FastLeNet) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode():
                module(eval_x)

        return step

    with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's random stream
        fused.train(), operators.train()
        train = _paired_rounds(train_step(fused), train_step(operators))
        fused.eval(), operators.eval()
        evaluation = _paired_rounds(eval_step(fused), eval_step(operators))
    return Verdict(train, evaluation, datetime.datetime.now().astimezone().isoformat(timespec="seconds"))


def verdict_path(kernels: Library, batch_size: int, eval_batch_size: int) -> Path:
    key = "\0".join(
        [
            kernels.path.name,
            str(torch.get_num_threads()),
            str(batch_size),
            str(min(eval_batch_size, EVAL_BATCH_CAP)),
            torch.__version__,
        ]
    )
    return cache_dir() / f"verdict-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cached_or_measured(
    model: LeNet5, kernels: Library, batch_size: int, eval_batch_size: int
) -> tuple[Verdict, Path | None, bool]:
    """The verdict for this machine and setting: (verdict, its file or None when disturbed rounds were not
    cached, whether it came from the cache)."""
    path = verdict_path(kernels, batch_size, eval_batch_size)
    try:
        saved = json.loads(path.read_text())
        return Verdict(Timing(**saved["train"]), Timing(**saved["eval"]), saved["measured"]), path, True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    verdict = measure(model, kernels, batch_size, eval_batch_size)
    if not (verdict.train.steady and verdict.eval.steady):
        return verdict, None, False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: parallel jobs never read a half-written file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(asdict(verdict), tmp, indent=1)
    os.replace(tmp.name, path)
    return verdict, path, False
