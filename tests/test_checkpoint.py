import torch

from lenet_sweep.checkpoint import load_checkpoint, save_checkpoint
from lenet_sweep.models import build_model
from lenet_sweep.train import make_optimizer
from tests.helpers.training import train_steps


def test_a_checkpoint_from_before_packed_parameters_resumes_with_its_momentum(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    separate = build_model("lenet")
    # The optimizer as checkpoints held it before parameters were packed: one state per parameter.
    separate_optimizer = torch.optim.SGD(separate.parameters(), lr=0.01, momentum=0.9, fused=True)
    train_steps(separate, separate_optimizer, x, y, 2)
    save_checkpoint(tmp_path / "checkpoint.pt", separate, separate_optimizer, torch.Generator(), 1, [])

    packed = build_model("lenet")
    packed_optimizer = make_optimizer(packed, "sgd", 0.01, 0.9)
    epoch, _ = load_checkpoint(tmp_path / "checkpoint.pt", packed, packed_optimizer, torch.Generator())
    assert epoch == 1
    train_steps(separate, separate_optimizer, x, y, 2)
    train_steps(packed, packed_optimizer, x, y, 2)
    for key, value in separate.state_dict().items():
        torch.testing.assert_close(packed.state_dict()[key], value, rtol=1e-5, atol=1e-7)
