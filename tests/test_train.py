import pytest
import torch
from torch import nn

from lenet_sweep.data import to_model_input
from lenet_sweep.datasets import load_mnist
from lenet_sweep.models import build_model
from lenet_sweep.train import DeviceData, DivergedError, fit, make_optimizer
from tests.helpers.cli import DATA
from tests.helpers.training import train_steps


class Recorder(nn.Module):
    """A linear classifier that remembers every batch it sees, by mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.seen = {"train": [], "eval": []}

    def forward(self, x):
        self.seen["train" if self.training else "eval"].append(x.detach().clone())
        return self.fc(x.flatten(1))


def left_half_images(n: int) -> torch.Tensor:
    """Images whose ink is only in the left half, so a flip is visible as ink on the right."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, :, :14] = 1.0
    return x


def right_ink_fraction(batches) -> float:
    x = torch.cat(batches)
    return (x[:, :, :, 14:].sum(dim=(1, 2, 3)) > 0).float().mean().item()


def test_flip_touches_about_half_the_training_samples_and_never_the_test_set():
    n = 4_000
    data = DeviceData(
        left_half_images(n), torch.randint(0, 10, (n,)), left_half_images(1_000), torch.zeros(1_000, dtype=torch.long)
    )
    model = Recorder()
    fit(
        model,
        make_optimizer(model.parameters(), "sgd", 0.01, 0.9),
        data,
        epochs=2,
        batch_size=64,
        eval_batch_size=500,
        generator=torch.Generator().manual_seed(0),
        hflip_p=0.5,
    )
    assert 0.46 < right_ink_fraction(model.seen["train"]) < 0.54
    assert right_ink_fraction(model.seen["eval"]) == 0.0
    assert torch.equal(data.train_x, left_half_images(n)), "augmentation must not modify the stored data"


def test_no_flip_without_augmentation():
    data = DeviceData(
        left_half_images(500),
        torch.zeros(500, dtype=torch.long),
        left_half_images(100),
        torch.zeros(100, dtype=torch.long),
    )
    model = Recorder()
    fit(model, make_optimizer(model.parameters(), "sgd", 0.01, 0.9), data, 1, 64, 100, torch.Generator().manual_seed(0))
    assert right_ink_fraction(model.seen["train"]) == 0.0


def test_non_finite_loss_raises():
    mnist = load_mnist(root=str(DATA), train_limit=600, test_limit=100)
    data = DeviceData(
        to_model_input(mnist.train.images), mnist.train.labels, to_model_input(mnist.test.images), mnist.test.labels
    )
    torch.manual_seed(0)
    model = build_model("mlp")
    with pytest.raises(DivergedError, match="epoch 1"):
        fit(
            model,
            make_optimizer(model.parameters(), "sgd", 1e6, 0.9),
            data,
            2,
            64,
            100,
            torch.Generator().manual_seed(0),
        )


def test_adam_trains_every_parameter():
    torch.manual_seed(0)
    model = build_model("lenet")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model.parameters(), "adam", 0.001)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    losses = train_steps(model, optimizer, x, y, 5)
    assert losses[-1] < losses[0]
    for key, value in model.state_dict().items():
        assert not torch.equal(value, initial[key]), key
