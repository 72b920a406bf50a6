"""The C kernels for LeNet-5's conv + Swish + max-pool blocks against PyTorch's operators."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, REPO

from lenet_sweep import fused_blocks
from lenet_sweep.data import load_mnist, to_model_input
from lenet_sweep.fused_blocks import Conv1SiluPool, Conv2SiluPool


def reference_block(x, weight, bias):
    return F.max_pool2d(F.silu(F.conv2d(x, weight, bias)), 2)


@pytest.fixture(scope="module")
def images():
    return to_model_input(load_mnist(root=str(DATA), test_limit=200).test.images[:96])


@pytest.fixture
def convs():
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)


def blocks_and_grads(fused: bool, x, convs, upstream):
    """Both blocks, fused or through PyTorch's operators, and the gradients of every input."""
    conv1, conv2 = convs
    first, second = (Conv1SiluPool.apply, Conv2SiluPool.apply) if fused else (reference_block, reference_block)
    hidden = first(x, conv1.weight, conv1.bias)
    hidden.retain_grad()
    out = second(hidden, conv2.weight, conv2.bias)
    params = (conv1.weight, conv1.bias, conv2.weight, conv2.bias)
    grads = torch.autograd.grad(out, (hidden, *params), upstream)
    return (hidden, out, *grads)


def test_kernels_build_on_this_machine():
    # CI installs a C compiler: a missing kernel here means a build that broke.
    assert fused_blocks.kernel() is not None


def test_outputs_and_gradients_match_pytorchs_operators(images, convs):
    upstream = torch.randn(len(images), 16, 4, 4)
    fused = blocks_and_grads(True, images, convs, upstream)
    reference = blocks_and_grads(False, images, convs, upstream)
    assert fused[0].is_contiguous(memory_format=torch.channels_last) and fused[1].is_contiguous()
    names = ["conv1 block", "conv2 block", "d conv1 block", "d conv1.weight", "d conv1.bias", "d conv2.weight",
             "d conv2.bias"]
    for name, got, expected in zip(names, fused, reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item(), msg=name)


@pytest.mark.parametrize("block", ["conv1", "conv2"])
def test_a_tied_window_sends_its_gradient_where_max_pool2d_does(images, convs, block):
    # Blank images (and, for conv2, a blank conv1 map): every pooling window is a four-way tie.
    x = torch.full((8, 1, 28, 28), -0.4242)
    x[:, :, 10:14, 12:15] = 2.0
    conv1, conv2 = convs
    if block == "conv1":
        pairs = [(Conv1SiluPool.apply, x, conv1), (reference_block, x, conv1)]
    else:
        hidden = torch.full((8, 12, 12, 6), 0.3).permute(0, 3, 1, 2).requires_grad_()
        pairs = [(Conv2SiluPool.apply, hidden, conv2), (reference_block, hidden, conv2)]
    grads = []
    for block_fn, inputs, conv in pairs:
        out = block_fn(inputs, conv.weight, conv.bias)
        wanted = (conv.weight,) if block == "conv1" else (inputs, conv.weight)
        grads.append(torch.autograd.grad(out.sum(), wanted))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_a_nan_in_a_window_makes_its_output_nan_as_max_pool2d_does(images, convs):
    x = images[:4].clone()
    x[1, 0, 13, 7] = float("nan")
    conv1, conv2 = convs
    with torch.no_grad():
        fused = Conv2SiluPool.apply(Conv1SiluPool.apply(x, conv1.weight, conv1.bias), conv2.weight, conv2.bias)
        reference = reference_block(reference_block(x, conv1.weight, conv1.bias), conv2.weight, conv2.bias)
    assert torch.isnan(reference).any() and not torch.isnan(reference).all()
    assert torch.equal(torch.isnan(fused), torch.isnan(reference))


def test_the_same_thread_count_gives_the_same_bits(images, convs):
    upstream = torch.randn(len(images), 16, 4, 4)
    threads = torch.get_num_threads()
    try:
        results = {}
        for count in (1, 2, 1, 2):
            torch.set_num_threads(count)
            results.setdefault(count, []).append(blocks_and_grads(True, images, convs, upstream))
    finally:
        torch.set_num_threads(threads)
    for runs in results.values():
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    for one, two in zip(results[1][0], results[2][0]):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5 * two.abs().max().item())


@pytest.mark.parametrize("compiler,message", [
    ("/nonexistent/cc", "no C compiler"),
    ("false", "could not build LeNet-5's block kernels"),
], ids=["missing", "failing"])
def test_without_a_working_compiler_lenet_runs_on_pytorch_operators(tmp_path, compiler, message):
    script = (
        "import torch\n"
        "from lenet_sweep import fused_blocks\n"
        "from lenet_sweep.models import build_model\n"
        "assert fused_blocks.kernel() is None\n"
        "torch.manual_seed(0)\n"
        "model = build_model('lenet')\n"
        "x = torch.randn(8, 1, 28, 28)\n"
        "torch.testing.assert_close(model(x), model.reference_forward(x), rtol=1e-5, atol=1e-6)\n"
        "print('fallback ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "CC": compiler, "XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout
    assert message in result.stderr
    assert not list(tmp_path.glob("lenet-sweep/*.so"))
