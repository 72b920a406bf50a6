"""The fast path (``lenet_sweep.fast``) computes the plain model's function; the C kernels, built for
every instruction set this machine runs, match PyTorch's operators. Speed itself is benchmarked, not tested."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from lenet_sweep import fast
from lenet_sweep.config import ConfigError
from lenet_sweep.data import MNIST_MEAN, MNIST_STD, to_model_input
from lenet_sweep.datasets import load_mnist
from lenet_sweep.fast import calibrate, kernels
from lenet_sweep.fast.blocks import Conv1SiluPool, Conv2SiluPool
from lenet_sweep.fast.lenet import FastLeNet
from lenet_sweep.models import build_model
from lenet_sweep.train import DeviceData, evaluate, fit, make_optimizer, train_one_epoch
from tests.helpers.cli import DATA, REPO, SMALL, run_cli, runs_of

LANES = {"avx512": 16, "avx2": 8, "sse": 4, "neon": 4}
ISAS = [isa.name for isa in kernels.supported_isas()]
# One epoch at lr 0.05 on 6,000 samples takes LeNet well off its initial plateau
# (~88 % test accuracy) while staying short.
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
def images(subset):
    return to_model_input(subset.test.images[:96])


@pytest.fixture(params=ISAS)
def library(request) -> kernels.Library:
    """The kernels built for each instruction set this processor runs."""
    try:
        return kernels.load(next(isa for isa in kernels.ISAS if isa.name == request.param))
    except kernels.Unavailable as error:
        pytest.skip(str(error))


@pytest.fixture
def convs():
    torch.manual_seed(0)
    return nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)


def reference_block(x, weight, bias):
    return F.max_pool2d(F.silu(F.conv2d(x, weight, bias)), 2)


def blocks_and_grads(library, x, convs, upstream):
    """Both blocks, on ``library``'s kernels or (None) PyTorch's operators, and the gradients of every input."""
    conv1, conv2 = convs
    if library is None:
        first = second = reference_block
    else:
        first, second = partial(Conv1SiluPool.apply, library), partial(Conv2SiluPool.apply, library)
    hidden = first(x, conv1.weight, conv1.bias)
    hidden.retain_grad()
    out = second(hidden, conv2.weight, conv2.bias)
    params = (conv1.weight, conv1.bias, conv2.weight, conv2.bias)
    grads = torch.autograd.grad(out, (hidden, *params), upstream)
    return (hidden, out, *grads)


# The C kernels against PyTorch's operators, for every build.


def test_kernels_build_on_this_machine():
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc): the kernels cannot be built here")
    assert ISAS, "no instruction set known for this processor"
    for name in ISAS:
        library = kernels.load(next(isa for isa in kernels.ISAS if isa.name == name))
        assert library.lanes == LANES[name], name


def test_outputs_and_gradients_match_pytorchs_operators(library, images, convs):
    upstream = torch.randn(len(images), 16, 4, 4)
    fused = blocks_and_grads(library, images, convs, upstream)
    reference = blocks_and_grads(None, images, convs, upstream)
    assert fused[0].is_contiguous() and fused[1].is_contiguous()
    names = [
        "conv1 block",
        "conv2 block",
        "d conv1 block",
        "d conv1.weight",
        "d conv1.bias",
        "d conv2.weight",
        "d conv2.bias",
    ]
    for name, got, expected in zip(names, fused, reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item(), msg=name)


@pytest.mark.parametrize("block", ["conv1", "conv2"])
def test_a_tied_window_sends_its_gradient_where_max_pool2d_does(library, convs, block):
    # Blank images (and, for conv2, a blank conv1 map): every pooling window is a four-way tie.
    x = torch.full((8, 1, 28, 28), -0.4242)
    x[:, :, 10:14, 12:15] = 2.0
    conv1, conv2 = convs
    fused = Conv1SiluPool if block == "conv1" else Conv2SiluPool
    if block == "conv1":
        inputs, conv = x, conv1
    else:
        inputs, conv = torch.full((8, 12, 12, 6), 0.3).permute(0, 3, 1, 2).requires_grad_(), conv2
    grads = []
    for block_fn in (lambda *args: fused.apply(library, *args), reference_block):
        out = block_fn(inputs, conv.weight, conv.bias)
        wanted = (conv.weight,) if block == "conv1" else (inputs, conv.weight)
        grads.append(torch.autograd.grad(out.sum(), wanted))
    # Misrouted ties would move whole gradients; sums of many equal terms round to ~1e-5.
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_a_nan_in_a_window_makes_its_output_nan_as_max_pool2d_does(library, images, convs):
    x = images[:4].clone()
    x[1, 0, 13, 7] = float("nan")
    conv1, conv2 = convs
    with torch.no_grad():
        hidden = Conv1SiluPool.apply(library, x, conv1.weight, conv1.bias)
        fused = Conv2SiluPool.apply(library, hidden, conv2.weight, conv2.bias)
        reference = reference_block(reference_block(x, conv1.weight, conv1.bias), conv2.weight, conv2.bias)
    assert torch.isnan(reference).any() and not torch.isnan(reference).all()
    assert torch.equal(torch.isnan(fused), torch.isnan(reference))


def test_the_same_thread_count_gives_the_same_bits(library, images, convs):
    upstream = torch.randn(len(images), 16, 4, 4)
    results = {}
    for count in (1, 2, 1, 2):
        torch.set_num_threads(count)
        results.setdefault(count, []).append(blocks_and_grads(library, images, convs, upstream))
    torch.set_num_threads(1)
    for runs in results.values():
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    for one, two in zip(results[1][0], results[2][0]):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5 * two.abs().max().item())


def test_the_isa_switch_names_a_bad_value_in_one_line(monkeypatch):
    monkeypatch.setenv(kernels.ISA_VARIABLE, "avx1024")
    with pytest.raises(kernels.Unavailable, match=r"^LENET_SWEEP_ISA=avx1024: unknown; choose from avx512, avx2"):
        kernels.requested_isa()
    for name in ISAS:
        monkeypatch.setenv(kernels.ISA_VARIABLE, name.upper())
        assert kernels.requested_isa().name == name


@pytest.mark.slow  # a fresh interpreter imports torch
@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "false"], ids=["missing", "failing"])
def test_without_a_working_compiler_auto_falls_back_and_on_refuses(tmp_path, compiler):
    script = (
        "import torch\n"
        "from lenet_sweep import fast\n"
        "from lenet_sweep.config import ConfigError\n"
        "from lenet_sweep.models import build_model\n"
        "torch.manual_seed(0)\n"
        "model = build_model('lenet')\n"
        "x = torch.randn(8, 1, 28, 28)\n"
        "expected = model(x)\n"
        "path = fast.accelerate(model, 'cpu', 'auto')\n"
        "assert path.kernels == 'train=operators eval=operators', path.kernels\n"
        "torch.testing.assert_close(path.module(x), expected, rtol=1e-5, atol=1e-6)\n"
        "try:\n"
        "    fast.accelerate(build_model('lenet'), 'cpu', 'on')\n"
        "except ConfigError as error:\n"
        "    print('refused:', error)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "CC": compiler, "XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    reason = "no C compiler" if compiler.startswith("/") else "could not build LeNet-5's block kernels"
    assert f"train.kernels=auto: {reason}" in result.stderr
    assert f"refused: train.kernels='on': {reason}" in result.stdout
    assert not list(tmp_path.glob("lenet-sweep/*.so"))


# The fast path against the plain model.


def loss_and_grads(model, forward, images, labels):
    # Same seed before each pass: dropout draws the same mask in both.
    torch.manual_seed(1)
    loss = F.cross_entropy(forward(images), labels)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("arch,dropout,batchnorm", [("lenet", 0.0, False), ("mlp", 0.0, False), ("lenet", 0.2, True)])
def test_the_operator_path_gives_the_models_loss_and_gradients(subset, arch, dropout, batchnorm):
    images, labels = to_model_input(subset.test.images[:64]), subset.test.labels[:64]
    torch.manual_seed(0)
    model = build_model(arch, dropout, batchnorm)
    fast_model = fast.accelerate(model, "cpu", "off").module
    assert (fast_model is model) == (arch == "mlp")
    reference_loss, _ = loss_and_grads(model, model, images, labels)
    fast_loss, _ = loss_and_grads(model, fast_model, images, labels)
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-6, atol=1e-6)
    # Gradients in float64, where the same sums in another order agree to ~1e-15: float32
    # rounding, amplified by batch norm's cancellations, would hide a real difference.
    model.double()
    _, reference_grads = loss_and_grads(model, model, images.double(), labels)
    _, fast_grads = loss_and_grads(model, fast_model, images.double(), labels)
    scale = max(g.abs().max() for g in reference_grads)
    for got, expected in zip(fast_grads, reference_grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_kernel_path_gives_the_models_loss_and_gradients(library, subset, dropout):
    images, labels = to_model_input(subset.test.images[:64]), subset.test.labels[:64]
    torch.manual_seed(0)
    model = build_model("lenet", dropout)
    fast_model = FastLeNet(model, library, library)
    reference_loss, reference_grads = loss_and_grads(model, model, images, labels)
    fast_loss, fast_grads = loss_and_grads(model, fast_model, images, labels)
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-5, atol=1e-6)
    for got, expected in zip(fast_grads, reference_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    with torch.no_grad():
        fast_model.eval(), model.eval()
        torch.testing.assert_close(fast_model(images), model(images), rtol=1e-5, atol=1e-6)


def test_batch_norm_by_phases_keeps_the_models_statistics(subset):
    x = to_model_input(subset.test.images[:64])
    torch.manual_seed(0)
    model = build_model("lenet", 0.0, True)
    reference = copy.deepcopy(model)
    fast_model = fast.accelerate(model, "cpu", "auto").module
    fast_model(x), reference(x)  # training mode: both update their running statistics
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(
            getattr(model.conv1_bn, name), getattr(reference.conv1_bn, name), rtol=1e-5, atol=1e-6
        )
    fast_model.eval(), reference.eval()
    torch.testing.assert_close(fast_model(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kernels_setting,batchnorm",
    [("on", False), ("off", False), ("off", True)],
    ids=["kernels", "channels-last", "by-phases"],
)
def test_max_pool_ties_go_where_max_pool2d_sends_them(kernels_setting, batchnorm, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if kernels_setting == "on" and not ISAS:
        pytest.skip("no kernel build for this processor")
    torch.manual_seed(0)
    model = build_model("lenet", batchnorm=batchnorm)
    reference = copy.deepcopy(model)
    try:
        fast_model = fast.accelerate(model, "cpu", kernels_setting).module
    except ConfigError as error:
        pytest.skip(str(error))
    # Constant images: every pooling window is a four-way tie.
    x = torch.full((8, 1, 28, 28), -0.4242)
    x[:, :, 10:14, 12:15] = 2.0
    got = torch.autograd.grad(fast_model(x).sum(), model.conv1.weight)[0]
    expected = torch.autograd.grad(reference(x).sum(), reference.conv1.weight)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def relu_lenet():
    model = build_model("lenet")
    model.act = nn.ReLU()
    return model


def avg_pool_lenet():
    model = build_model("lenet")
    model.pool = nn.AvgPool2d(2)
    return model


def edited_forward_lenet():
    model = build_model("lenet")
    plain = model.forward
    model.forward = lambda x: plain(x) * 2
    return model


@pytest.mark.parametrize(
    "make", [relu_lenet, avg_pool_lenet, edited_forward_lenet], ids=["relu", "avg-pool", "edited-forward"]
)
def test_the_fast_path_does_not_stand_in_for_a_different_network(make):
    torch.manual_seed(0)
    model = make()
    path = fast.accelerate(model, "cpu", "on")
    assert path.module is model
    assert path.kernels == "train=operators eval=operators"


def test_a_process_probes_each_kind_of_model_once(monkeypatch):
    """Jobs of one process (a packed or joblib launcher's) share the probe's verdict; a changed forward is probed."""
    probed = []
    probe = fast._probed_difference
    monkeypatch.setattr(fast, "_differences", {})
    monkeypatch.setattr(fast, "_probed_difference", lambda model, kern: probed.append(model) or probe(model, kern))
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert isinstance(fast.accelerate(build_model("lenet"), "cpu", "off").module, FastLeNet)
    assert len(probed) == 1
    edited = edited_forward_lenet()
    assert fast.accelerate(edited, "cpu", "off").module is edited and len(probed) == 2


def test_kernels_that_compute_other_values_are_not_used(monkeypatch, caplog):
    """A build that miscomputes (an untested compiler or instruction set) is caught on the probe images."""
    if not ISAS:
        pytest.skip("no kernel build for this processor")
    monkeypatch.setattr(fast, "_difference", lambda model, kernels: None if kernels is None else 0.5)
    path = fast.accelerate(build_model("lenet"), "cpu", "auto")
    assert isinstance(path.module, FastLeNet) and path.kernels == "train=operators eval=operators"
    assert "compute other values (by 0.5)" in caplog.text
    with pytest.raises(ConfigError, match=r"^train.kernels='on': the fused-\w+ kernels built here compute other"):
        fast.accelerate(build_model("lenet"), "cpu", "on")


def test_parameters_keep_their_names_and_a_saved_state_dict_loads(tmp_path):
    torch.manual_seed(0)
    saved = build_model("lenet")
    torch.save(saved.state_dict(), tmp_path / "weights.pt")
    model = build_model("lenet")
    names = [n for n, _ in model.named_parameters()]
    path = fast.accelerate(model, "cpu", "off")
    assert [n for n, _ in model.named_parameters()] == names
    assert len(path.parameters) == 1 and path.parameters[0].numel() == sum(p.numel() for p in model.parameters())
    model.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(path.module.eval()(x), saved.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer,lr,momentum", [("sgd", 0.01, 0.9), ("adam", 0.001, None)])
def test_packed_parameters_train_like_separate_ones(optimizer, lr, momentum):
    torch.manual_seed(0)
    packed, separate = build_model("lenet"), build_model("lenet")
    separate.load_state_dict(packed.state_dict())
    path = fast.accelerate(packed, "cpu", "off")
    packed_optimizer = make_optimizer(path.parameters, optimizer, lr, momentum, weight_decay=1e-3)
    separate_optimizer = make_optimizer(separate.parameters(), optimizer, lr, momentum, weight_decay=1e-3)
    initial = {k: v.clone() for k, v in separate.state_dict().items()}
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    # Both through the plain forward: this compares the optimizer steps only.
    for model, optimizer in ((packed, packed_optimizer), (separate, separate_optimizer)):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    # The same updates; kernels may round differently on the packed buffer's alignment.
    for key, value in separate.state_dict().items():
        assert not torch.equal(value, initial[key]), key
        torch.testing.assert_close(packed.state_dict()[key], value, rtol=1e-5, atol=1e-7)


def test_one_epoch_on_the_fast_path_reaches_the_plain_models_accuracy(subset):
    x, y = to_model_input(subset.train.images), subset.train.labels
    test_x, test_y = to_model_input(subset.test.images), subset.test.labels
    accuracies = []
    for accelerated in (True, False):
        torch.manual_seed(0)
        model = build_model("lenet")
        path = fast.accelerate(model, "cpu", "on" if ISAS else "off") if accelerated else None
        trained = path.module if path else model
        optimizer = make_optimizer(path.parameters if path else model.parameters(), "sgd", LR, 0.9)
        train_one_epoch(trained, optimizer, x, y, 64, torch.Generator().manual_seed(0))
        accuracies.append(evaluate(trained, test_x, test_y, 1000)[1])
    assert accuracies[1] > 50, "the subset should take LeNet off its initial plateau"
    assert abs(accuracies[0] - accuracies[1]) <= 1.0


@pytest.mark.parametrize("kernels_setting", ["on", "off"])
def test_same_seed_gives_identical_metrics(subset, kernels_setting, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if kernels_setting == "on" and not ISAS:
        pytest.skip("no kernel build for this processor")
    data = DeviceData(
        to_model_input(subset.train.images[:640]),
        subset.train.labels[:640],
        to_model_input(subset.test.images[:200]),
        subset.test.labels[:200],
    )

    def run():
        torch.manual_seed(0)
        path = fast.accelerate(build_model("lenet", dropout=0.2), "cpu", kernels_setting)
        optimizer = make_optimizer(path.parameters, "sgd", 0.01, 0.9)
        history = fit(path.module, optimizer, data, 2, 64, 1000, torch.Generator().manual_seed(0), hflip_p=0.5)
        return [{k: v for k, v in m.as_dict().items() if k != "epoch_seconds"} for m in history]

    assert run() == run()


@pytest.fixture
def built(tmp_path, monkeypatch) -> kernels.Library:
    """The kernels for this processor, with a fresh cache (builds and verdicts) under ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        return kernels.library()
    except kernels.Unavailable as error:
        pytest.skip(str(error))


def test_auto_times_both_paths_and_caches_the_verdict_of_undisturbed_rounds(built, tmp_path, caplog):
    caplog.set_level("INFO", logger="lenet_sweep.fast")
    path = fast.accelerate(build_model("lenet"), "cpu", "auto", 64, 500)
    assert re.fullmatch(rf"train=({built.label}|operators) eval=({built.label}|operators)", path.kernels)
    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train.kernels=auto")]
    assert "calibrated now" in message and "training step at batch 64" in message
    cached = list((tmp_path / "lenet-sweep").glob("verdict-*.json"))
    # On a machine busy with other work the rounds are disturbed: that verdict serves one run only.
    assert len(cached) == (0 if "not cached: other load disturbed the timing" in message else 1)


def test_auto_follows_the_cached_verdict_for_training_and_evaluation_apart(built, caplog):
    caplog.set_level("INFO", logger="lenet_sweep.fast")
    verdict_file = calibrate.verdict_path(built, 64, 500)
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    close, clear = (
        {"fused_ms": [9.5, 9.4], "operators_ms": [10.0, 10.0]},
        {"fused_ms": [4.0, 4.1], "operators_ms": [9.0, 9.2]},
    )
    verdict_file.write_text(json.dumps({"train": close, "eval": clear, "measured": "2026-11-29T12:00:00+00:00"}))
    path = fast.accelerate(build_model("lenet"), "cpu", "auto", 64, 500)
    # Kernels 5 % faster are within noise: the operators stay.
    assert path.kernels == f"train=operators eval={built.label}"
    assert "calibrated 2026-11-29T12:00:00+00:00" in caplog.text


def test_auto_leaves_torchs_random_stream_alone(built):
    # Calibrating trains a copy with dropout; the run's own draws must not depend on whether it did.
    model = build_model("lenet", dropout=0.2)
    state = torch.get_rng_state()
    fast.accelerate(model, "cpu", "auto")
    assert torch.equal(torch.get_rng_state(), state)


def test_a_timing_is_steady_when_its_typical_round_is_near_its_fastest():
    assert calibrate.Timing([2.0, 2.1, 2.2, 2.0, 2.3], [4.0, 4.2, 4.1, 4.0, 4.4]).steady
    assert not calibrate.Timing([2.0, 9.0, 8.0, 2.1, 7.5], [4.0, 4.2, 4.1, 4.0, 4.4]).steady


def test_the_project_input_is_the_writeups_transform_output(subset):
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    images = subset.test.images[:16]
    expected = torch.stack([transform(Image.fromarray(np.asarray(image))) for image in images])
    assert torch.equal(to_model_input(images), expected)


# The runner with each setting.


@pytest.mark.slow
def test_the_runner_records_which_path_ran_for_each_setting(workdir, tmp_path):
    cache = tmp_path / "cache"
    result = run_cli(
        ["-m", "model=lenet", "train.kernels=auto,on,off", "sweep.skip_finished=false", *SMALL],
        workdir,
        XDG_CACHE_HOME=str(cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = runs_of(workdir)
    tags = {r.data.params["train.kernels"]: r.data.tags["kernels"] for r in runs}
    assert tags["off"] == "train=operators eval=operators"
    if ISAS:
        isa = kernels.requested_isa().name
        assert tags["on"] == f"train=fused-{isa} eval=fused-{isa}"
        assert re.fullmatch(rf"train=(fused-{isa}|operators) eval=(fused-{isa}|operators)", tags["auto"])
        assert (result.stdout + result.stderr).count("train.kernels=auto: ") == 1


@pytest.mark.slow
def test_on_without_a_compiler_fails_before_any_run(workdir, tmp_path):
    result = run_cli(
        ["model=lenet", "train.kernels=on", *SMALL], workdir, CC="/nonexistent/cc", XDG_CACHE_HOME=str(tmp_path)
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: train.kernels='on': no C compiler (/nonexistent/cc)")
    )
    _, runs = runs_of(workdir)
    assert runs == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_matches_the_plain_model(subset):
    device = torch.device("cuda")
    data = DeviceData(
        to_model_input(subset.train.images[:1000], device),
        subset.train.labels[:1000].to(device),
        to_model_input(subset.test.images[:500], device),
        subset.test.labels[:500].to(device),
    )
    torch.manual_seed(0)
    model = build_model("lenet").to(device)
    path = fast.accelerate(model, device, "auto")
    history = fit(
        path.module,
        make_optimizer(path.parameters, "sgd", LR, 0.9),
        data,
        1,
        64,
        1000,
        torch.Generator().manual_seed(0),
        hflip_p=0.5,
    )
    assert torch.isfinite(torch.tensor(history[-1].train_loss))
    # cuDNN would otherwise run both convolutions in TF32, rounding them differently.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        path.module.eval(), model.eval()
        torch.testing.assert_close(path.module(data.test_x), model(data.test_x), rtol=1e-4, atol=1e-4)


def test_a_failed_build_says_the_compilers_first_error_keeps_its_log_and_is_tried_again_by_a_new_process(
    tmp_path, monkeypatch
):
    calls = tmp_path / "calls"
    compiler = tmp_path / "cc"
    compiler.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "cc 1.0"; exit 0; fi\n'
        f"echo build >> {calls}\n"
        "echo 'conv1_block.c: In function conv1_forward:' >&2\n"
        "echo 'conv1_block.c:12:5: error: unknown type name vf' >&2\n"
        "echo 'conv1_block.c:40:1: error: expected declaration' >&2\n"
        "exit 1\n"
    )
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_failed", {})
    monkeypatch.setattr(kernels, "_loaded", {})
    sse = next(isa for isa in kernels.ISAS if isa.name == "sse")
    with pytest.raises(kernels.Unavailable) as failed:
        kernels.load(sse)
    message = str(failed.value)
    assert "conv1_block.c:12:5: error: unknown type name vf" in message and "expected declaration" not in message
    (log,) = (tmp_path / "cache" / "lenet-sweep").glob("*.log")
    assert f"(whole log: {log})" in message and "expected declaration" in log.read_text()
    with pytest.raises(kernels.Unavailable):
        kernels.load(sse)
    assert calls.read_text().count("build") == 1, "one process builds once"
    monkeypatch.setattr(kernels, "_failed", {})  # what a new process starts with
    with pytest.raises(kernels.Unavailable):
        kernels.load(sse)
    assert calls.read_text().count("build") == 2, "a new process tries the build again"
