"""Seconds per MNIST epoch: this project's training loop against the usual pipelines (issue 5).

In one process, on the same network, hyperparameters (batch 64, SGD lr 0.01
momentum 0.9, 60k train / 10k test, test evaluated after each epoch) and
thread setting, it times ``--epochs`` epochs after one warm-up epoch of the
following, taking turns epoch by epoch:

  a   the writeup's pipeline: one PNG file per sample opened with PIL (see
      ``reference_pipelines``);
  a2  PyTorch's examples: ``torchvision.datasets.MNIST`` with the same transforms;
  b   this project's loop as the runner uses it: ``load_mnist`` + ``to_model_input``,
      ``fast.accelerate`` (``train.kernels=auto``), ``train_one_epoch`` and ``evaluate``
      (eval batch 1000); on a GPU, with ``fit``'s CUDA-graph training step.
      ``--kernels auto,off`` adds a (b) row per further setting (``b:off``), timed
      in the same rounds: paired timings of the settings.

All pipelines start from the same weights, and the first epoch visits the
training samples in the same order in all of them. It prints a table and the check that (b) reaches the same test
accuracy as (a) and (a2), then a scaling table of (b), and writes everything to
``<out>/epoch_speed.json``. ``--device cuda`` runs (b) alone with the data on the GPU.
It names the processor, its widest vector instruction set, the thread count and,
per (b) row, which path ran LeNet-5's conv blocks (``fused-avx512``,
``fused-avx2``, ... or ``operators``, for training and for evaluation).
``LENET_SWEEP_ISA=avx2`` makes (b) use the AVX2 build of the kernels on an
AVX-512 machine (see ``lenet_sweep.fast.kernels``).

    python benchmarks/epoch_speed.py [--epochs 2] [--models lenet,mlp,lenet+flip] [--kernels auto]
                                     [--skip-scaling] [--out outputs/bench] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Subset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import reference_pipelines as ref  # noqa: E402
from lenet_sweep import fast  # noqa: E402
from lenet_sweep.data import balanced_subset, to_model_input  # noqa: E402
from lenet_sweep.datasets import load_mnist  # noqa: E402
from lenet_sweep.fast import kernels as kernel_builds  # noqa: E402
from lenet_sweep.models import build_model  # noqa: E402
from lenet_sweep.train import evaluate, make_optimizer, train_one_epoch  # noqa: E402

LR, MOMENTUM, BATCH, EVAL_BATCH, SEED = 0.01, 0.9, 64, 1000, 0
MODELS = {"lenet": ("lenet", 0.0), "mlp": ("mlp", 0.0), "lenet+flip": ("lenet", 0.5)}
# Test-accuracy points allowed between (b) and each reference after the same epochs. With
# flips the pipelines draw different flips (the references per sample from torch's global
# generator, shared by the interleaved pipelines), and accuracy after 3 epochs moves by
# chance: (b) alone over six seeds ranged 97.05-97.80 % (sd 0.27), (a) and (a2) differed by
# 0.56. 1.5 points is about four standard deviations of a difference of two such draws.
ACCURACY_TOLERANCE, FLIP_ACCURACY_TOLERANCE = 1.0, 1.5
Epoch = Callable[[], tuple[float, float]]


def accuracy_tolerance(model: str) -> float:
    _, hflip_p = MODELS[model]
    return FLIP_ACCURACY_TOLERANCE if hflip_p > 0 else ACCURACY_TOLERANCE


def kernels_build() -> str:
    """Which build of the C kernels (b) would load here, or why none."""
    try:
        isa = kernel_builds.requested_isa()
    except kernel_builds.Unavailable as error:
        return f"none ({error})"
    forced = f" (forced by {kernel_builds.ISA_VARIABLE})" if os.environ.get(kernel_builds.ISA_VARIABLE) else ""
    return isa.name + forced


def fresh_model(arch: str, device: str) -> torch.nn.Module:
    """The same initial weights for every pipeline of a model."""
    torch.manual_seed(SEED)
    return build_model(arch).to(device)


def _summary(name: str, model: str, train_each: list, test_each: list, last: tuple, n_train: int, n_test: int) -> dict:
    train_loss, train_acc, test_loss, test_acc = last
    train_s, test_s = sum(train_each) / len(train_each), sum(test_each) / len(test_each)
    return {
        "pipeline": name,
        "model": model,
        "train_s": train_s,
        "test_s": test_s,
        "total_s": train_s + test_s,
        "train_s_each": train_each,
        "test_s_each": test_each,
        "train_samples_per_s": n_train / train_s,
        "test_samples_per_s": n_test / test_s,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
    }


def time_epochs(
    model: str, pipelines: dict[str, tuple[Epoch, Epoch]], epochs: int, n_train: int, n_test: int
) -> list[dict]:
    """One untimed warm-up epoch (train + test) per pipeline, then ``epochs`` timed rounds; per-epoch means.

    Each round runs one epoch of every pipeline in turn, so a slow spell of the
    machine (other tenants, frequency changes) falls on all of them alike
    instead of on whichever pipeline happened to run then; every other round
    runs them in reverse order, so a steady drift cancels out too.
    """
    for train, test in pipelines.values():
        train(), test()
    times = {name: ([], []) for name in pipelines}
    last = {}
    for round_index in range(epochs):
        order = list(pipelines) if round_index % 2 == 0 else list(pipelines)[::-1]
        for name in order:
            train, test = pipelines[name]
            started = time.perf_counter()
            train_loss, train_acc = train()
            trained = time.perf_counter()
            test_loss, test_acc = test()
            times[name][0].append(trained - started)
            times[name][1].append(time.perf_counter() - trained)
            last[name] = (train_loss, train_acc, test_loss, test_acc)
    return [_summary(name, model, *times[name], last[name], n_train, n_test) for name in pipelines]


def project_epochs(
    arch: str, hflip_p: float, data: tuple, device: str, batch_size: int = BATCH, kernels: str = "auto"
) -> tuple[Epoch, Epoch, str]:
    """Pipeline (b): the runner's fast path, ``train_one_epoch`` and ``evaluate`` over tensors on
    ``device``; and which path runs LeNet-5's conv blocks."""
    x, y, test_x, test_y = data
    fast_path = fast.accelerate(fresh_model(arch, device), device, kernels, batch_size, EVAL_BATCH)
    model = fast_path.module
    optimizer = make_optimizer(fast_path.parameters, "sgd", LR, MOMENTUM)
    generator = torch.Generator().manual_seed(SEED)
    graphed = fast.graphed_step(model, optimizer, x, y, batch_size, hflip_p)
    return (
        lambda: train_one_epoch(model, optimizer, x, y, batch_size, generator, hflip_p, graphed=graphed),
        lambda: evaluate(model, test_x, test_y, EVAL_BATCH),
        fast_path.kernels if arch == "lenet" else "none (no conv blocks)",
    )


def reference_epochs(arch: str, loaders) -> tuple[Epoch, Epoch]:
    """Pipelines (a) and (a2): the writeup's loop over ``loaders``."""
    model = fresh_model(arch, "cpu")
    optimizer = ref.writeup_optimizer(model, LR, MOMENTUM)
    train_loader, test_loader = loaders
    return lambda: ref.train_epoch(model, optimizer, train_loader), lambda: ref.evaluate(model, test_loader)


def reference_loaders(pipeline: str, mnist, args, flip: bool):
    """Loaders of (a) or (a2) over (b)'s samples; their first epoch's shuffle is (b)'s."""
    if pipeline == "a":
        png = args.out / "png"
        subset = args.train_limit is not None or args.test_limit is not None
        suffix = f"-{len(mnist.train)}-{len(mnist.test)}" if subset else ""
        train_dir = ref.ensure_png_export(mnist.train, png / f"train{suffix}")
        test_dir = ref.ensure_png_export(mnist.test, png / f"test{suffix}")
        train, test = ref.png_datasets(train_dir, test_dir, flip)
    else:
        root = ref.ensure_torchvision_raw(REPO / "data", args.out / "torchvision")
        train, test = ref.torchvision_datasets(root, flip)
        # load_mnist's class-balanced subsets, so that (a2) sees (b)'s samples.
        if args.train_limit is not None:
            train = Subset(train, balanced_subset(train.targets, args.train_limit, 0).tolist())
        if args.test_limit is not None:
            test = Subset(test, balanced_subset(test.targets, args.test_limit, 0).tolist())
    return ref.make_loaders(train, test, torch.Generator().manual_seed(SEED))


def scaling(data: tuple, device: str) -> list[dict]:
    """Seconds per epoch of (b) for LeNet by batch size (full set) and by training-set fraction (batch 64)."""
    x, y, test_x, test_y = data
    rows = []
    cases = [(bs, 1.0) for bs in (64, 256, 1024)] + [(BATCH, f) for f in (0.25, 0.5)]
    for batch_size, fraction in cases:
        keep = balanced_subset(y.cpu(), int(len(y) * fraction), SEED).to(y.device) if fraction < 1 else None
        part = (x, y) if keep is None else (x[keep], y[keep])
        train, test, _ = project_epochs("lenet", 0.0, (*part, test_x, test_y), device, batch_size)
        (timed,) = time_epochs("lenet", {"b": (train, test)}, 1, len(part[1]), len(test_y))
        rows.append({"batch_size": batch_size, "fraction": fraction, "train_samples": len(part[1]), **timed})
    return rows


def print_results(results: list[dict], ratios: dict, checks: list[dict]) -> None:
    header = (
        f"{'pipeline':<9}{'model':<12}{'train s/ep':>11}{'test s/ep':>10}{'train img/s':>12}{'test img/s':>11}"
        f"{'train acc':>10}{'test acc':>9}{'x b':>7}  conv blocks"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = ratios.get(r["model"], {}).get(r["pipeline"])
        print(
            f"{r['pipeline']:<9}{r['model']:<12}{r['train_s']:>11.2f}{r['test_s']:>10.2f}"
            f"{r['train_samples_per_s']:>12,.0f}{r['test_samples_per_s']:>11,.0f}"
            f"{r['train_acc']:>10.2f}{r['test_acc']:>9.2f}{'' if ratio is None else f'{ratio:>6.1f}x':>7}"
            f"  {r.get('conv_blocks', '')}"
        )
    print("x b: the pipeline's (train + test) seconds per epoch over (b)'s; conv blocks: the path (b) ran them on")
    paired = [r for r in results if r["pipeline"].startswith("b:")]
    for r in paired:
        b = next(o for o in results if o["pipeline"] == "b" and o["model"] == r["model"])
        pairs = ", ".join(
            f"{tb + eb:.2f}/{tr + er:.2f}"
            for tb, eb, tr, er in zip(b["train_s_each"], b["test_s_each"], r["train_s_each"], r["test_s_each"])
        )
        print(f"paired epochs {r['model']}, (train + test) s, b / {r['pipeline']}: {pairs}")
        for part in ("train", "test"):
            ratio = statistics.median(x / y for x, y in zip(b[f"{part}_s_each"], r[f"{part}_s_each"]))
            print(f"  {part}: median of b / {r['pipeline']} over the {len(b['train_s_each'])} pairs {ratio:.2f}")
    for c in checks:
        verdict = "ok" if c["ok"] else "MISMATCH"
        print(
            f"accuracy check {c['model']}: b {c['b']:.2f}% vs {c['reference']} {c['reference_acc']:.2f}% "
            f"(|diff| {abs(c['b'] - c['reference_acc']):.2f} <= {accuracy_tolerance(c['model'])}): {verdict}"
        )


def print_scaling(rows: list[dict]) -> None:
    print(
        f"\nscaling of (b), lenet\n{'batch':>6}{'train set':>11}{'train s/ep':>11}{'test s/ep':>10}{'train img/s':>12}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>6}{r['train_samples']:>11,}{r['train_s']:>11.2f}{r['test_s']:>10.2f}"
            f"{r['train_samples_per_s']:>12,.0f}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--models", default="lenet,mlp,lenet+flip", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--pipelines", default="a,a2,b", help="comma list of a, a2, b")
    parser.add_argument(
        "--kernels",
        default="auto",
        help="comma list of train.kernels settings for (b): the first is b, the others b:<setting>",
    )
    parser.add_argument("--skip-scaling", action="store_true", help="skip the batch-size / data-size table")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to run (b) alone on the GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for all pipelines (default: torch's)")
    parser.add_argument("--train-limit", type=int, default=None, help="class-balanced training subset (smoke runs)")
    parser.add_argument("--test-limit", type=int, default=None, help="class-balanced test subset (smoke runs)")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.pipelines = ["b"] if args.device != "cpu" else args.pipelines.split(",")
    args.kernels = args.kernels.split(",")
    unknown = [m for m in args.models if m not in MODELS] + [p for p in args.pipelines if p not in ("a", "a2", "b")]
    unknown += [k for k in args.kernels if k not in fast.KERNEL_MODES]
    if unknown:
        parser.error(f"unknown model or pipeline: {', '.join(unknown)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    mnist = load_mnist(root=str(REPO / "data"), train_limit=args.train_limit, test_limit=args.test_limit)
    data = (
        to_model_input(mnist.train.images, args.device),
        mnist.train.labels.to(args.device),
        to_model_input(mnist.test.images, args.device),
        mnist.test.labels.to(args.device),
    )
    n_train, n_test = len(mnist.train), len(mnist.test)
    widest = kernel_builds.supported_isas()
    isa, build = widest[0].name if widest else "none known", kernels_build()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {kernel_builds.cpu_model()} "
        f"(vector ISA {isa}; kernel build {build}), device {args.device}, "
        f"{n_train:,} train / {n_test:,} test, {args.epochs} timed epochs after 1 warm-up",
        flush=True,
    )
    print(
        f"(b) runs with train.kernels={args.kernels[0]}"
        + "".join(f", b:{k} with train.kernels={k}" for k in args.kernels[1:]),
        flush=True,
    )

    results = []
    for model in args.models:
        arch, hflip_p = MODELS[model]
        pipelines, conv_blocks = {}, {}
        for pipeline in args.pipelines:
            if pipeline == "b":
                for i, kernels in enumerate(args.kernels):
                    name = "b" if i == 0 else f"b:{kernels}"
                    train, test, conv_blocks[name] = project_epochs(arch, hflip_p, data, args.device, kernels=kernels)
                    pipelines[name] = (train, test)
            else:
                pipelines[pipeline] = reference_epochs(arch, reference_loaders(pipeline, mnist, args, hflip_p > 0))
                conv_blocks[pipeline] = "operators (writeup's forward)"
        for r in time_epochs(model, pipelines, args.epochs, n_train, n_test):
            r["conv_blocks"] = conv_blocks[r["pipeline"]]
            results.append(r)
            print(
                f"  {r['pipeline']:<6}{model:<11} train {r['train_s']:.2f} s  test {r['test_s']:.2f} s  "
                f"test acc {r['test_acc']:.2f}%",
                flush=True,
            )

    by_key = {(r["pipeline"], r["model"]): r for r in results}
    ratios, checks = {}, []
    for model in args.models:
        b = by_key.get(("b", model))
        for pipeline in ("a", "a2"):
            other = by_key.get((pipeline, model))
            if b is None or other is None:
                continue
            ratios.setdefault(model, {})[pipeline] = other["total_s"] / b["total_s"]
            diff = abs(b["test_acc"] - other["test_acc"])
            checks.append(
                {
                    "model": model,
                    "reference": pipeline,
                    "b": b["test_acc"],
                    "reference_acc": other["test_acc"],
                    "ok": diff <= accuracy_tolerance(model),
                }
            )
    print()
    print_results(results, ratios, checks)
    scale_rows = [] if args.skip_scaling else scaling(data, args.device)
    if scale_rows:
        print_scaling(scale_rows)

    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "cpu": kernel_builds.cpu_model(),
        "vector_isa": isa,
        "kernel_build": build,
        "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "kernels": args.kernels,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "epochs_timed": args.epochs,
        "warmup_epochs": 1,
        "train_samples": n_train,
        "test_samples": n_test,
        "hyperparameters": {
            "batch_size": BATCH,
            "lr": LR,
            "momentum": MOMENTUM,
            "eval_batch_size_b": EVAL_BATCH,
            "eval_batch_size_reference": ref.BATCH_SIZE,
        },
        "results": results,
        "ratios_vs_b": ratios,
        "accuracy_checks": checks,
        "scaling": scale_rows,
    }
    path = args.out / "epoch_speed.json"
    path.write_text(json.dumps(report, indent=2))
    # Other processes on the machine distort the timings, two OpenMP threads badly so.
    print(
        f"\nload average before {load_before[0]:.2f}, after {report['load_average_after'][0]:.2f} "
        f"(this run adds about {torch.get_num_threads()}); wrote {path}"
    )
    return report


if __name__ == "__main__":
    main()
