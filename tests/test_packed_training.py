"""A pack's member trains as its solo run does: same weights and metrics after real MNIST steps.

Tolerance (the one the packed launcher states): per epoch, losses within 1e-4 of the solo run's and
accuracies within one sample's share; weights within 1e-4. Only float32 rounding differs (grouped and
batched kernels against the solo ones), and over a few dozen SGD steps it stays near 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from lenet_sweep import fast
from lenet_sweep.data import limit_split, to_model_input
from lenet_sweep.datasets import load_mnist
from lenet_sweep.models import build_model
from lenet_sweep.packed.trainer import MemberSpec, PackedTraining, PackShape, fresh_state
from lenet_sweep.train import DeviceData, fit, make_optimizer

LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4
TRAIN, TEST = 320, 100


@pytest.fixture(scope="module")
def data() -> DeviceData:
    mnist = load_mnist()
    train, test = limit_split(mnist.train, TRAIN, 0), limit_split(mnist.test, TEST, 0)
    return DeviceData(to_model_input(train.images), train.labels, to_model_input(test.images), test.labels)


def solo_run(shape: PackShape, spec: MemberSpec, data: DeviceData, epochs: int):
    """The member's solo run as ``job.build_training`` and ``train.fit`` train it."""
    torch.manual_seed(spec.seed)
    model = build_model(shape.arch, shape.dropout, shape.batchnorm)
    path = fast.accelerate(model, "cpu", "off", shape.batch_size, shape.eval_batch_size)
    momentum = spec.momentum if shape.optimizer == "sgd" else None
    optimizer = make_optimizer(path.parameters, shape.optimizer, spec.lr, momentum, spec.weight_decay)
    generator = torch.Generator().manual_seed(spec.seed)
    history = fit(
        path.module, optimizer, data, epochs, shape.batch_size, shape.eval_batch_size, generator, spec.hflip_p
    )
    return model, history


def packed_run(shape: PackShape, specs: list[MemberSpec], data: DeviceData, epochs: int):
    pack = PackedTraining(shape, specs, [fresh_state(shape, s.seed) for s in specs], data)
    histories: dict[int, list] = {i: [] for i in range(len(specs))}
    diverged: dict[int, Exception] = {}
    pack.fit(epochs, 1, lambda i, m: histories[i].append(m), diverged.__setitem__)
    return pack, histories, diverged


def assert_member_matches_solo(pack, member, history, shape, spec, data, epochs):
    model, solo_history = solo_run(shape, spec, data, epochs)
    assert len(history) == len(solo_history) == epochs
    for got, want in zip(history, solo_history):
        assert got.train_loss == pytest.approx(want.train_loss, abs=LOSS_TOLERANCE)
        assert got.test_loss == pytest.approx(want.test_loss, abs=LOSS_TOLERANCE)
        assert got.train_acc == pytest.approx(want.train_acc, abs=100 / TRAIN)
        assert got.test_acc == pytest.approx(want.test_acc, abs=100 / TEST)
    packed_weights = pack.member_state(member).model
    for name, value in model.state_dict().items():
        assert torch.allclose(packed_weights[name].float(), value.float(), atol=WEIGHT_TOLERANCE), name


@pytest.mark.parametrize(
    "shape",
    [
        PackShape("lenet", 0.2, False, "sgd", 64, 1000),  # dropout: each member's masks from its own stream
        PackShape("mlp", 0.0, True, "sgd", 64, 1000),  # batch norm: per member statistics and running buffers
        PackShape("lenet", 0.0, False, "adam", 64, 1000),
    ],
    ids=["lenet-dropout-sgd", "mlp-batchnorm-sgd", "lenet-adam"],
)
def test_each_member_trains_as_its_solo_run(shape, data):
    lr = 0.01 if shape.optimizer == "sgd" else 1e-3
    momentum = 0.9 if shape.optimizer == "sgd" else 0.0
    specs = [
        MemberSpec(0, lr, momentum),
        MemberSpec(1, 3 * lr, momentum / 2, weight_decay=1e-3, hflip_p=0.5),
        MemberSpec(0, lr / 2, 0.0 if shape.optimizer == "sgd" else momentum),
    ]
    pack, histories, diverged = packed_run(shape, specs, data, epochs=2)
    assert not diverged
    for member, spec in enumerate(specs):
        assert_member_matches_solo(pack, member, histories[member], shape, spec, data, epochs=2)


def test_a_diverging_member_is_dropped_alone(data):
    shape = PackShape("lenet", 0.0, False, "sgd", 64, 1000)
    specs = [MemberSpec(0, 0.01, 0.9), MemberSpec(1, 1e6, 0.9)]
    pack, histories, diverged = packed_run(shape, specs, data, epochs=2)
    assert list(diverged) == [1] and "training loss became" in str(diverged[1])
    assert histories[1] == []  # the solo run fails in its first epoch, before any metric
    assert pack.active == [True, False]
    assert_member_matches_solo(pack, 0, histories[0], shape, specs[0], data, epochs=2)


def test_a_member_continues_from_its_state_as_if_never_stopped(data):
    """Two epochs in one go equal one epoch, the member's state taken out and put into a new pack, one more."""
    shape = PackShape("lenet", 0.2, False, "sgd", 64, 1000)
    specs = [MemberSpec(0, 0.01, 0.9), MemberSpec(1, 0.02, 0.5, hflip_p=0.5)]
    straight, straight_histories, _ = packed_run(shape, specs, data, epochs=2)
    first, _, _ = packed_run(shape, specs, data, epochs=1)
    resumed = PackedTraining(shape, specs[::-1], [first.member_state(i) for i in (1, 0)], data)
    histories: dict[int, list] = {0: [], 1: []}
    resumed.fit(2, 2, lambda i, m: histories[i].append(m), lambda i, e: None)
    for member, resumed_member in ((0, 1), (1, 0)):
        assert histories[resumed_member][0].test_loss == pytest.approx(
            straight_histories[member][1].test_loss, abs=1e-6
        )
        want = straight.member_state(member).model
        got = resumed.member_state(resumed_member).model
        assert all(torch.allclose(got[k].float(), want[k].float(), atol=1e-6) for k in want)
