"""Seconds per LeNet-5 epoch on a GPU through the runner's own loop, in each of its modes.

    python benchmarks/gpu_modes.py [--epochs 3] [--batch-size 64]

Times ``lenet_sweep.train.fit`` with the whole MNIST on the device (batches
gathered there, each step one CUDA-graph replay, no host sync inside an epoch)
as the runner does with ``device=cuda``: plain, with ``train.amp=bf16``, with
``train.compile=true``, and with both; and, for comparison, the eager loop.
The first epoch of each mode is a warm-up (compilation, cuDNN autotuning) and
is reported apart. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import time

import torch

from lenet_sweep import fast
from lenet_sweep.data import to_model_input
from lenet_sweep.datasets import load_mnist
from lenet_sweep.models import build_model
from lenet_sweep.train import DeviceData, evaluate, fit, make_optimizer, train_one_epoch

MODES = {
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "compile": (None, True),
    "bf16+compile": (torch.bfloat16, True),
}


def time_mode(data: DeviceData, amp_dtype, compile_model: bool, epochs: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    fast_path = fast.accelerate(build_model("lenet").cuda(), "cuda")
    optimizer = make_optimizer(fast_path.parameters, "sgd", 0.01, 0.9)
    trained = torch.compile(fast_path.module) if compile_model else fast_path.module
    marks = [time.perf_counter()]

    def mark(_metrics) -> None:
        marks.append(time.perf_counter())  # fit reads the epoch's sums once, so the GPU is done here

    history = fit(
        trained,
        optimizer,
        data,
        epochs,
        batch_size,
        1000,
        torch.Generator().manual_seed(0),
        amp_dtype=amp_dtype,
        on_epoch_end=mark,
    )
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    return {"warmup_s": seconds[0], "epoch_s": sum(seconds[1:]) / len(seconds[1:]), "test_acc": history[-1].test_acc}


def time_eager(data: DeviceData, epochs: int, batch_size: int) -> dict:
    """The same loop without the CUDA graph: one launch per kernel, for comparison."""
    torch.manual_seed(0)
    fast_path = fast.accelerate(build_model("lenet").cuda(), "cuda")
    model = fast_path.module
    optimizer = make_optimizer(fast_path.parameters, "sgd", 0.01, 0.9)
    generator = torch.Generator().manual_seed(0)
    seconds, test_acc = [], 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        train_one_epoch(model, optimizer, data.train_x, data.train_y, batch_size, generator)
        _, test_acc = evaluate(model, data.test_x, data.test_y, 1000)
        seconds.append(time.perf_counter() - started)
    return {"warmup_s": seconds[0], "epoch_s": sum(seconds[1:]) / len(seconds[1:]), "test_acc": test_acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    mnist = load_mnist()
    data = DeviceData(
        to_model_input(mnist.train.images, "cuda"),
        mnist.train.labels.cuda(),
        to_model_input(mnist.test.images, "cuda"),
        mnist.test.labels.cuda(),
    )
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch_size}, "
        f"{args.epochs} epochs per mode (first = warm-up)"
    )
    print("| mode | warm-up epoch s | s/epoch (train + test) | test_acc after last epoch |")
    print("| --- | --- | --- | --- |")
    row = time_eager(data, args.epochs, args.batch_size)
    print(f"| eager (no graph) | {row['warmup_s']:.2f} | {row['epoch_s']:.3f} | {row['test_acc']:.2f} |", flush=True)
    for name, (amp_dtype, compile_model) in MODES.items():
        row = time_mode(data, amp_dtype, compile_model, args.epochs, args.batch_size)
        print(f"| {name} | {row['warmup_s']:.2f} | {row['epoch_s']:.3f} | {row['test_acc']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
