"""The C kernel for LeNet-5's conv1 + Swish + max-pool against PyTorch's operators."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, REPO

from lenet_sweep import fused_conv1
from lenet_sweep.data import load_mnist, to_model_input
from lenet_sweep.fused_conv1 import Conv1SiluPool


def reference_block(x, weight, bias):
    return F.max_pool2d(F.silu(F.conv2d(x, weight, bias)), 2)


@pytest.fixture(scope="module")
def images():
    return to_model_input(load_mnist(root=str(DATA), test_limit=200).test.images[:96])


@pytest.fixture
def conv1():
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 6, 5)


def block_and_grads(block, x, conv, upstream):
    out = block(x, conv.weight, conv.bias)
    return (out, *torch.autograd.grad(out, (conv.weight, conv.bias), upstream))


def test_kernel_builds_on_this_machine():
    # CI installs a C compiler: a missing kernel here means a build that broke.
    assert fused_conv1.kernel() is not None


def test_forward_and_gradients_match_pytorchs_operators(images, conv1):
    upstream = torch.randn(len(images), 6, 12, 12)
    fused = block_and_grads(Conv1SiluPool.apply, images, conv1, upstream)
    reference = block_and_grads(reference_block, images, conv1, upstream)
    assert fused[0].is_contiguous(memory_format=torch.channels_last)
    for got, expected in zip(fused, reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_a_nan_in_a_window_makes_its_output_nan_as_max_pool2d_does(images, conv1):
    x = images[:4].clone()
    x[1, 0, 13, 7] = float("nan")
    with torch.no_grad():
        fused, reference = Conv1SiluPool.apply(x, conv1.weight, conv1.bias), reference_block(x, conv1.weight, conv1.bias)
    assert torch.isnan(reference).any()
    assert torch.equal(torch.isnan(fused), torch.isnan(reference))


def test_the_same_thread_count_gives_the_same_bits(images, conv1):
    upstream = torch.randn(len(images), 6, 12, 12)
    threads = torch.get_num_threads()
    try:
        results = {}
        for count in (1, 2, 1, 2):
            torch.set_num_threads(count)
            results.setdefault(count, []).append(block_and_grads(Conv1SiluPool.apply, images, conv1, upstream))
    finally:
        torch.set_num_threads(threads)
    for runs in results.values():
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    for one, two in zip(results[1][0], results[2][0]):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5 * two.abs().max().item())


@pytest.mark.parametrize("compiler,message", [
    ("/nonexistent/cc", "no C compiler"),
    ("false", "could not build conv1_silu_pool.c"),
], ids=["missing", "failing"])
def test_without_a_working_compiler_lenet_runs_on_pytorch_operators(tmp_path, compiler, message):
    script = (
        "import torch\n"
        "from lenet_sweep import fused_conv1\n"
        "from lenet_sweep.models import build_model\n"
        "assert fused_conv1.kernel() is None\n"
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
