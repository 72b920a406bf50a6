"""The fast training path computes what the writeup's pipeline computes (issue 5); speed itself is benchmarked, not tested."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lenet_sweep.data import load_mnist, to_model_input
from lenet_sweep.models import build_model
from lenet_sweep.train import DeviceData, evaluate, fit, make_optimizer, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
sys.path.insert(0, str(REPO))
from benchmarks import reference_pipelines as ref  # noqa: E402

# One epoch at lr 0.05 on 6,000 samples takes LeNet well off its initial
# plateau (~88% test accuracy) while staying short; both pipelines see the
# samples in the same order, so only rounding separates them.
N_TRAIN, N_TEST, LR = 6_000, 1_000, 0.05


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests check math, not speed: one thread keeps them fast on a shared machine,
    where two OpenMP threads stall whenever another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def subset():
    return load_mnist(root=str(DATA), train_limit=N_TRAIN, test_limit=N_TEST)


@pytest.fixture(scope="module")
def png_dirs(subset, tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    return ref.ensure_png_export(subset.train, root / "train"), ref.ensure_png_export(subset.test, root / "test")


def reference_batch(png_dirs) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 test samples as the writeup's Dataset and transforms produce them."""
    _, test_set = ref.png_datasets(*png_dirs)
    _, test_loader = ref.make_loaders(test_set, test_set)
    return next(iter(test_loader))


def test_project_input_is_the_writeups_transform_output(subset, png_dirs):
    images, labels = reference_batch(png_dirs)
    assert torch.equal(to_model_input(subset.test.images[:64]), images)
    assert torch.equal(subset.test.labels[:64], labels)


def loss_and_grads(model, forward, images, labels):
    # Same seed before each pass: dropout draws the same mask in both.
    torch.manual_seed(1)
    loss = F.cross_entropy(forward(images), labels)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("arch,dropout,batchnorm", [("lenet", 0.0, False), ("mlp", 0.0, False), ("lenet", 0.2, True)])
def test_fast_forward_gives_the_reference_loss_and_gradients(subset, png_dirs, arch, dropout, batchnorm):
    images, labels = reference_batch(png_dirs)
    fast_input = to_model_input(subset.test.images[:64])
    torch.manual_seed(0)
    model = build_model(arch, dropout, batchnorm)
    reference_loss, _ = loss_and_grads(model, model.reference_forward, images, labels)
    fast_loss, _ = loss_and_grads(model, model, fast_input, subset.test.labels[:64])
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-6, atol=1e-6)
    # Gradients in float64, where the same sums in another order agree to ~1e-15: float32
    # rounding, amplified by batch norm's cancellations, would hide a real difference.
    model.double()
    _, reference_grads = loss_and_grads(model, model.reference_forward, images.double(), labels)
    _, fast_grads = loss_and_grads(model, model, fast_input.double(), labels)
    scale = max(g.abs().max() for g in reference_grads)
    for fast, reference in zip(fast_grads, reference_grads):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-12 * scale)


def test_batch_norm_by_phases_keeps_the_reference_statistics(subset):
    x = to_model_input(subset.test.images[:64])
    torch.manual_seed(0)
    fast = build_model("lenet", 0.0, True)
    reference = copy.deepcopy(fast)
    fast(x), reference.reference_forward(x)  # training mode: both update their running statistics
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(fast.conv1_bn, name), getattr(reference.conv1_bn, name), rtol=1e-5, atol=1e-6)
    fast.eval(), reference.eval()
    torch.testing.assert_close(fast(x), reference.reference_forward(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batchnorm", [False, True], ids=["fused-kernel", "by-phases"])
def test_max_pool_ties_go_where_max_pool2d_sends_them(batchnorm):
    torch.manual_seed(0)
    model = build_model("lenet", batchnorm=batchnorm)
    # Constant images: every pooling window is a four-way tie.
    x = torch.full((8, 1, 28, 28), -0.4242)
    x[:, :, 10:14, 12:15] = 2.0
    grads = [torch.autograd.grad(forward(x).sum(), model.conv1.weight)[0] for forward in (model, model.reference_forward)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_one_epoch_of_each_pipeline_reaches_the_same_test_accuracy(subset, png_dirs):
    x, y = to_model_input(subset.train.images), subset.train.labels
    test_x, test_y = to_model_input(subset.test.images), subset.test.labels
    torch.manual_seed(0)
    model = build_model("lenet")
    optimizer = make_optimizer(model, "sgd", LR, 0.9)
    train_one_epoch(model, optimizer, x, y, 64, torch.Generator().manual_seed(0))
    _, fast_acc = evaluate(model, test_x, test_y, 1000)

    torch.manual_seed(0)
    model = build_model("lenet")
    train_loader, test_loader = ref.make_loaders(*ref.png_datasets(*png_dirs), torch.Generator().manual_seed(0))
    ref.train_epoch(model, ref.writeup_optimizer(model, LR, 0.9), train_loader)
    _, reference_acc = ref.evaluate(model, test_loader)
    assert reference_acc > 50, "the subset should take LeNet off its initial plateau"
    assert abs(fast_acc - reference_acc) <= 1.0


def test_same_seed_gives_identical_metrics(subset):
    data = DeviceData(to_model_input(subset.train.images[:640]), subset.train.labels[:640],
                      to_model_input(subset.test.images[:200]), subset.test.labels[:200])

    def run():
        torch.manual_seed(0)
        model = build_model("lenet")
        history = fit(model, make_optimizer(model, "sgd", 0.01, 0.9), data, 2, 64, 1000,
                      torch.Generator().manual_seed(0), hflip_p=0.5)
        return [{k: v for k, v in m.as_dict().items() if k != "epoch_seconds"} for m in history]

    assert run() == run()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_matches_the_reference_forward(subset):
    device = torch.device("cuda")
    data = DeviceData(to_model_input(subset.train.images[:1000], device), subset.train.labels[:1000].to(device),
                      to_model_input(subset.test.images[:500], device), subset.test.labels[:500].to(device))
    torch.manual_seed(0)
    model = build_model("lenet").to(device)
    history = fit(model, make_optimizer(model, "sgd", LR, 0.9), data, 1, 64, 1000,
                  torch.Generator().manual_seed(0), hflip_p=0.5)
    assert torch.isfinite(torch.tensor(history[-1].train_loss))
    # cuDNN would otherwise run both convolutions in TF32, rounding them differently.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(model(data.test_x), model.reference_forward(data.test_x), rtol=1e-4, atol=1e-4)
