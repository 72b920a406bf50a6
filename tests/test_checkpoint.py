"""Checkpoints continue a run exactly, whichever optimizer layout saved them and whichever loads them.

CPU training packs the parameters into one buffer (one optimizer state); a GPU keeps one state per
parameter. A run started on one and relaunched on the other must carry its momentum over.
"""

import pytest
import torch

from lenet_sweep import fast
from lenet_sweep.checkpoint import load_checkpoint, save_checkpoint
from lenet_sweep.models import build_model
from lenet_sweep.train import make_optimizer
from tests.helpers.training import train_steps


def packed_sgd(model):
    return make_optimizer(fast.accelerate(model, "cpu", "off").parameters, "sgd", 0.01, 0.9)


def per_parameter_sgd(model):
    """The layout a GPU trains with: one optimizer state per parameter."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)


def momentum_by_name(model, optimizer) -> dict[str, torch.Tensor]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) == 1:  # packed: the flat buffer holds the parameters' in model order
        flat = optimizer.state[params[0]]["momentum_buffer"]
        sizes = [p.numel() for p in model.parameters()]
        return {name: chunk for (name, _), chunk in zip(model.named_parameters(), flat.split(sizes))}
    return {name: optimizer.state[p]["momentum_buffer"].flatten() for name, p in model.named_parameters()}


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))


def trained(make, batch):
    model = build_model("lenet")
    optimizer = make(model)
    train_steps(model, optimizer, *batch, 2)
    return model, optimizer


@pytest.mark.parametrize(
    "save_with,load_with",
    [(packed_sgd, per_parameter_sgd), (per_parameter_sgd, packed_sgd)],
    ids=["packed-to-per-parameter", "per-parameter-to-packed"],
)
def test_a_checkpoint_resumes_in_the_other_optimizer_layout_with_its_momentum(tmp_path, batch, save_with, load_with):
    saved_model, saved_optimizer = trained(save_with, batch)
    save_checkpoint(tmp_path / "checkpoint.pt", saved_model, saved_optimizer, torch.Generator(), 2, [])

    model = build_model("lenet")
    optimizer = load_with(model)
    epoch, _ = load_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, torch.Generator())
    assert epoch == 2
    expected = momentum_by_name(saved_model, saved_optimizer)
    for name, buffer in momentum_by_name(model, optimizer).items():
        assert torch.equal(buffer, expected[name]), name
    train_steps(saved_model, saved_optimizer, *batch, 2)
    train_steps(model, optimizer, *batch, 2)
    for key, value in saved_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("old_layout", [packed_sgd, per_parameter_sgd], ids=["packed", "per-parameter"])
def test_a_checkpoint_in_the_optimizers_own_format_still_resumes(tmp_path, batch, old_layout):
    # What checkpoints held before the by-name form: the optimizer's state_dict, in its layout.
    old_model, old_optimizer = trained(old_layout, batch)
    torch.save(
        {
            "epoch": 3,
            "model": old_model.state_dict(),
            "optimizer": old_optimizer.state_dict(),
            "generator": torch.Generator().get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [],
        },
        tmp_path / "checkpoint.pt",
    )
    model = build_model("lenet")
    optimizer = packed_sgd(model)
    assert load_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, torch.Generator())[0] == 3
    expected = momentum_by_name(old_model, old_optimizer)
    for name, buffer in momentum_by_name(model, optimizer).items():
        assert torch.equal(buffer, expected[name]), name
