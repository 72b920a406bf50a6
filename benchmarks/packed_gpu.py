"""The packed trainer on a GPU: equivalence with solo runs, then issue 20's targets for the training core.

    python benchmarks/packed_gpu.py [--out DIR] [--quick] [--device cuda]

Prints the GPU's name and torch's version, then:

1. equivalence: members of a pack against their solo runs (``train.fit``, CUDA graph), 2 epochs on a
   600/200-sample MNIST subset; losses within 1e-3 and accuracies within one sample pass (dropout on
   a GPU draws its masks from the pack's CUDA stream, not the solo run's: reported, not judged);
2. the time of one captured training step (a graph replay), solo against packs of 1, 12 and 64;
3. 64 LeNet-5 jobs (8 learning rates x 8 momenta), 15 epochs on full MNIST, as one pack;
4. the writeup's study (12 runs: LeNet-5 and LeNet-5 + flips x 3 seeds in one pack, the MLP x 3,
   LeNet-5 with dropout + batch norm x 3), 15 epochs;
5. one solo LeNet-5 run of 15 epochs, for the one-by-one estimate.

These time the training core (no MLflow, no Hydra): what the packed launcher adds on top is the
runs' bookkeeping. ``--quick`` shrinks everything (to try the script on a CPU). Results go to
``DIR/packed_gpu.json`` and ``DIR/packed_gpu.txt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lenet_sweep import fast
from lenet_sweep.data import limit_split, to_model_input
from lenet_sweep.datasets import load_mnist
from lenet_sweep.models import build_model
from lenet_sweep.packed.trainer import MemberSpec, PackedTraining, PackShape, fresh_state
from lenet_sweep.train import DeviceData, fit, make_optimizer

LINES: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LINES.append(text)


def device_data(mnist, device: torch.device, train_limit: int | None, test_limit: int | None) -> DeviceData:
    train, test = limit_split(mnist.train, train_limit, 0), limit_split(mnist.test, test_limit, 0)
    return DeviceData(
        to_model_input(train.images, device),
        train.labels.to(device),
        to_model_input(test.images, device),
        test.labels.to(device),
    )


def solo(shape: PackShape, spec: MemberSpec, data: DeviceData, epochs: int):
    torch.manual_seed(spec.seed)
    device = data.train_x.device
    model = build_model(shape.arch, shape.dropout, shape.batchnorm).to(device)
    path = fast.accelerate(model, device, "off", shape.batch_size, shape.eval_batch_size)
    momentum = spec.momentum if shape.optimizer == "sgd" else None
    optimizer = make_optimizer(path.parameters, shape.optimizer, spec.lr, momentum, spec.weight_decay)
    generator = torch.Generator().manual_seed(spec.seed)
    return fit(path.module, optimizer, data, epochs, shape.batch_size, shape.eval_batch_size, generator, spec.hflip_p)


def packed(shape: PackShape, specs: list[MemberSpec], data: DeviceData, epochs: int):
    pack = PackedTraining(shape, specs, [fresh_state(shape, s.seed) for s in specs], data)
    histories: dict[int, list] = {i: [] for i in range(len(specs))}
    pack.fit(epochs, 1, lambda i, m: histories[i].append(m), lambda i, e: None)
    return pack, histories


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def equivalence(mnist, device: torch.device) -> dict:
    data = device_data(mnist, device, 600, 200)
    results, passed = {}, True
    cases = {
        "lenet sgd": PackShape("lenet", 0.0, False, "sgd", 64, 1000),
        "mlp+batchnorm sgd": PackShape("mlp", 0.0, True, "sgd", 64, 1000),
        "lenet adam": PackShape("lenet", 0.0, False, "adam", 64, 1000),
        "lenet_reg sgd (dropout: not judged)": PackShape("lenet", 0.2, True, "sgd", 64, 1000),
    }
    for label, shape in cases.items():
        lr = 0.01 if shape.optimizer == "sgd" else 1e-3
        specs = [
            MemberSpec(0, lr, 0.9 if shape.optimizer == "sgd" else 0.0),
            MemberSpec(1, 2 * lr, 0.5 if shape.optimizer == "sgd" else 0.0, 1e-3, 0.5),
        ]
        _, histories = packed(shape, specs, data, 2)
        worst_loss = worst_acc = 0.0
        for i, spec in enumerate(specs):
            for got, want in zip(histories[i], solo(shape, spec, data, 2)):
                worst_loss = max(worst_loss, abs(got.train_loss - want.train_loss), abs(got.test_loss - want.test_loss))
                worst_acc = max(worst_acc, abs(got.train_acc - want.train_acc), abs(got.test_acc - want.test_acc))
        ok = worst_loss <= 1e-3 and worst_acc <= 100 / 200 + 1e-9
        judged = "not judged" not in label
        passed &= ok or not judged
        results[label] = {"max_loss_diff": worst_loss, "max_acc_diff_points": worst_acc, "ok": ok}
        say(
            f"equivalence {label:<38} max |loss diff| {worst_loss:.2e}  max |acc diff| {worst_acc:.2f} points  "
            f"{'ok' if ok else 'DIFFERS'}"
        )
    say(f"equivalence: {'PASS' if passed else 'FAIL'}")
    return {"cases": results, "passed": passed}


def step_times(mnist, device: torch.device, quick: bool) -> dict:
    """Milliseconds per captured step (graph replay) for a solo run and packs of 1, 12 and 64 LeNet-5s."""
    if device.type != "cuda":
        say("step times: skipped (needs CUDA graphs)")
        return {}
    data = device_data(mnist, device, 6400 if quick else None, 1000)
    replays = 50 if quick else 500
    n = len(data.train_y)
    torch.manual_seed(0)
    model = build_model("lenet").to(device)
    path = fast.accelerate(model, device, "off")
    optimizer = make_optimizer(path.parameters, "sgd", 0.01, 0.9)
    graphed = fast.graphed_step(path.module, optimizer, data.train_x, data.train_y, 64)
    order = torch.randperm(n, device=device)
    graphed.idx.copy_(order[:64])

    def timed(replay) -> float:
        for _ in range(20):
            replay()
        sync(device)
        started = time.perf_counter()
        for _ in range(replays):
            replay()
        sync(device)
        return (time.perf_counter() - started) / replays * 1000

    result = {"solo_ms": timed(graphed.graph.replay)}
    shape = PackShape("lenet", 0.0, False, "sgd", 64, 1000)
    for members in (1, 12, 64):
        specs = [MemberSpec(i, 0.01, 0.9) for i in range(members)]
        pack = PackedTraining(shape, specs, [fresh_state(shape, s.seed) for s in specs], data)
        step = pack.graphed
        step.orders.copy_(torch.stack([torch.randperm(n, device=device) for _ in range(members)]))

        def replay(step=step) -> None:
            step.position.zero_()
            step.graph.replay()

        result[f"pack{members}_ms"] = timed(replay)
    for key, value in result.items():
        say(
            f"step time {key:<10} {value:.3f} ms"
            + ("" if key == "solo_ms" else f"  ({value / result['solo_ms']:.2f}x a solo step)")
        )
    return result


def timed_packs(label: str, packs: list[tuple[PackShape, list[MemberSpec]]], data: DeviceData, epochs: int) -> dict:
    device = data.train_x.device
    sync(device)
    started = time.perf_counter()
    accuracies = []
    for shape, specs in packs:
        _, histories = packed(shape, specs, data, epochs)
        accuracies += [h[-1].test_acc for h in histories.values() if h]
    sync(device)
    seconds = time.perf_counter() - started
    runs = sum(len(specs) for _, specs in packs)
    say(
        f"{label}: {runs} runs x {epochs} epochs in {seconds:.1f} s "
        f"(test acc {min(accuracies):.2f}-{max(accuracies):.2f})"
    )
    return {
        "runs": runs,
        "epochs": epochs,
        "seconds": seconds,
        "test_acc_min": min(accuracies),
        "test_acc_max": max(accuracies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true", help="tiny settings, to try the script on a CPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--skip-studies",
        action="store_true",
        help="equivalence and step times only (packed_gpu_cli.py times the sweeps)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    say(f"device {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    mnist = load_mnist()
    results = {"device": name, "torch": torch.__version__, "equivalence": equivalence(mnist, device)}
    results["step_times"] = step_times(mnist, device, args.quick)
    (args.out / "packed_gpu.json").write_text(json.dumps(results, indent=2))
    if not args.skip_studies:
        studies(mnist, device, args.quick, results)
    (args.out / "packed_gpu.json").write_text(json.dumps(results, indent=2))
    (args.out / "packed_gpu.txt").write_text("\n".join(LINES) + "\n")


def studies(mnist, device: torch.device, quick: bool, results: dict) -> None:
    """Sections 3-5: the training core's time for the 64-job grid, the writeup's study and one solo run."""
    epochs = 1 if quick else 15
    data = device_data(mnist, device, 1280 if quick else None, 1000 if quick else None)
    lenet = PackShape("lenet", 0.0, False, "sgd", 64, 1000)
    grid = [
        MemberSpec(0, lr, momentum)
        for lr in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
        for momentum in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
    ]
    results["grid64"] = timed_packs("64 LeNet-5 jobs, one pack", [(lenet, grid)], data, epochs)
    seeds = (0, 1, 2)
    writeup = [
        (lenet, [MemberSpec(s, 0.01, 0.9) for s in seeds] + [MemberSpec(s, 0.01, 0.9, hflip_p=0.5) for s in seeds]),
        (PackShape("mlp", 0.0, False, "sgd", 64, 1000), [MemberSpec(s, 0.01, 0.9) for s in seeds]),
        (PackShape("lenet", 0.2, True, "sgd", 64, 1000), [MemberSpec(s, 0.01, 0.9) for s in seeds]),
    ]
    results["writeup12"] = timed_packs("the writeup's study, 3 packs", writeup, data, epochs)
    sync(device)
    started = time.perf_counter()
    solo(lenet, MemberSpec(0, 0.01, 0.9), data, epochs)
    sync(device)
    results["solo_lenet_seconds"] = time.perf_counter() - started
    say(f"one solo LeNet-5 run: {epochs} epochs in {results['solo_lenet_seconds']:.1f} s")


if __name__ == "__main__":
    main()
