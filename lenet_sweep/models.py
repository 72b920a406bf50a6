"""The writeup's networks: LeNet-5 and a same-size MLP, with optional dropout and batch norm.

Swish (x * sigmoid(x), ``nn.SiLU``) is the activation throughout. Regularisation
is the same switch for both networks: ``batchnorm`` puts BatchNorm after every
hidden conv/linear layer, before its activation; ``dropout`` > 0 puts
Dropout(p) after the activation of the last hidden layer.

Each ``forward`` is the writeup's, layer by layer. The training loop runs the
same function faster through ``lenet_sweep.fast``.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: type[nn.Module], channels: int, enabled: bool) -> nn.Module:
    return kind(channels) if enabled else nn.Identity()


class LeNet5(nn.Module):
    """conv1 1->6 5x5, pool; conv2 6->16 5x5, pool; conv3 16->120 4x4; fc1 120->84; fc2 84->10."""

    def __init__(self, dropout: float = 0.0, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv1_bn = _norm(nn.BatchNorm2d, 6, batchnorm)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv2_bn = _norm(nn.BatchNorm2d, 16, batchnorm)
        self.conv3 = nn.Conv2d(16, 120, 4)
        self.conv3_bn = _norm(nn.BatchNorm2d, 120, batchnorm)
        self.fc1 = nn.Linear(120, 84)
        self.fc1_bn = _norm(nn.BatchNorm1d, 84, batchnorm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(84, 10)
        self.act = nn.SiLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` [N, 1, 28, 28]."""
        x = self.pool(self.act(self.conv1_bn(self.conv1(x))))
        x = self.pool(self.act(self.conv2_bn(self.conv2(x))))
        x = self.act(self.conv3_bn(self.conv3(x))).flatten(1)
        x = self.dropout(self.act(self.fc1_bn(self.fc1(x))))
        # The writeup applies Swish to the logits too.
        return self.act(self.fc2(x))


class MLP(nn.Module):
    """784 -> 60 -> 30 -> 10, Swish after the two hidden layers."""

    def __init__(self, dropout: float = 0.0, batchnorm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 60)
        self.fc1_bn = _norm(nn.BatchNorm1d, 60, batchnorm)
        self.fc2 = nn.Linear(60, 30)
        self.fc2_bn = _norm(nn.BatchNorm1d, 30, batchnorm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc3 = nn.Linear(30, 10)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1_bn(self.fc1(x.flatten(1))))
        x = self.dropout(self.act(self.fc2_bn(self.fc2(x))))
        return self.fc3(x)


ARCHITECTURES = {"lenet": LeNet5, "mlp": MLP}


def build_model(arch: str, dropout: float = 0.0, batchnorm: bool = False) -> nn.Module:
    """The network ``arch`` (``lenet`` or ``mlp``) with the given regularisation."""
    try:
        return ARCHITECTURES[arch](dropout=dropout, batchnorm=batchnorm)
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_table(model: nn.Module) -> list[tuple[str, int]]:
    """Trainable parameters per top-level layer that has any, in definition order."""
    rows = []
    for name, module in model.named_children():
        n = count_parameters(module)
        if n:
            rows.append((name, n))
    return rows


def format_parameter_table(model: nn.Module) -> str:
    """The per-layer table printed at the start of each run, like the writeup's lists."""
    rows = parameter_table(model)
    width = max(len(name) for name, _ in rows + [("total", 0)])
    lines = [f"{name:<{width}}  {n:>8,}" for name, n in rows]
    lines.append(f"{'total':<{width}}  {count_parameters(model):>8,}")
    return "\n".join(lines)
