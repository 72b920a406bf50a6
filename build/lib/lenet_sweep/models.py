"""The writeup's networks: LeNet-5 and a same-size MLP, with optional dropout and batch norm.

Swish (x * sigmoid(x), ``nn.SiLU``) is the activation throughout. Regularisation
is the same switch for both networks: ``batchnorm`` puts BatchNorm after every
hidden conv/linear layer, before its activation; ``dropout`` > 0 puts
Dropout(p) after the activation of the last hidden layer.

LeNet-5's forward computes exactly the layers above, but arranged for speed
(see ``LeNet5.forward``; on the CPU its two conv blocks are C kernels,
``fused_blocks``); ``reference_forward`` is the plain module-by-module version
it is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lenet_sweep import fused_blocks


class _MaxOverPhases(torch.autograd.Function):
    """2x2 max pooling of a map stored as its four pooling phases: ``[N, 4*C, h, w]`` -> ``[N, C, h, w]``.

    Channel block ``k`` of the input holds the window positions (0,0), (0,1),
    (1,0), (1,1) for k = 0..3. The gradient goes to the first maximal position
    in that order, as ``nn.MaxPool2d``'s does, so ties (common on the constant
    background) are routed identically.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        p = y.unflatten(1, (4, -1))
        top = torch.maximum(p[:, 0], p[:, 1])
        bottom = torch.maximum(p[:, 2], p[:, 3])
        ctx.save_for_backward(y, top, bottom)
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        y, top, bottom = ctx.saved_tensors
        p = y.unflatten(1, (4, -1))
        # The next layer runs channels-last; mixing layouts would defeat vectorisation below.
        grad = grad.contiguous()
        # 0/1 masks in the gradient's dtype: float compares and multiplies
        # vectorise, where bool masks and torch.where here are several times slower.
        mask = torch.empty_like(grad)
        grad_top = grad * torch.ge(top, bottom, out=mask)
        grad_bottom = grad - grad_top
        grad_00 = grad_top * torch.ge(p[:, 0], p[:, 1], out=mask)
        grad_10 = grad_bottom * torch.ge(p[:, 2], p[:, 3], out=mask)
        # One stack beats writing each phase into a strided slice of the result.
        return torch.stack((grad_00, grad_top - grad_00, grad_10, grad_bottom - grad_10), 1).flatten(1, 2)


def conv_act_pool_by_phases(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module, norm: nn.Module) -> torch.Tensor:
    """``MaxPool2d(2)(act(norm(conv(x))))`` for a stride-1 unpadded ``conv``, computed by pooling phases.

    Each output of a 2x2 pooling window comes from the kernel shifted by (r, s);
    the four shifted copies, zero-padded to (k+1)x(k+1), make one stride-2
    convolution with 4x the channels whose channel blocks are the window's four
    positions. That replaces ``max_pool2d``'s CPU kernel, which is slow on
    LeNet's 6-channel maps, with three contiguous ``maximum`` ops, and gives
    oneDNN 24 output channels to vectorise over instead of 6. The sums are the
    same products as ``conv``'s plus exact zeros. ``norm`` (identity or
    ``BatchNorm2d``) sees the four phases as four times the batch: per channel,
    the same values as the full map, so the same statistics.
    """
    shifted = [F.pad(conv.weight, (s, 1 - s, r, 1 - r)) for r in (0, 1) for s in (0, 1)]
    y = F.conv2d(x, torch.cat(shifted), conv.bias.repeat(4), stride=2)
    n, _, h, w = y.shape
    y = norm(y.view(n * 4, conv.out_channels, h, w)).view(n, 4 * conv.out_channels, h, w)
    return _MaxOverPhases.apply(act(y))


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
        """Logits of ``x`` [N, 1, 28, 28]; the same function as ``reference_forward``, faster.

        On the CPU without batch norm, each conv + Swish + pool block is one C
        kernel (``fused_blocks``), which keeps the convolutions' maps out of
        memory. Where that does not apply: CPU training without batch norm runs
        conv1 on channels-last strides, where ``max_pool2d``'s CPU kernel is
        about 10x faster than on NCHW; elsewhere (evaluation, batch norm, a GPU)
        conv1 (+ batch norm) + Swish + pool runs by pooling phases; conv2 and
        its pooling run channels-last. conv3 covers its whole 4x4 input, so it
        runs as the matrix product it amounts to.
        """
        if isinstance(self.conv1_bn, nn.Identity) and fused_blocks.applies(x, self.conv1.weight):
            x = fused_blocks.Conv1SiluPool.apply(x, self.conv1.weight, self.conv1.bias)
            x = fused_blocks.Conv2SiluPool.apply(x, self.conv2.weight, self.conv2.bias)
        else:
            x = self._conv_blocks(x)
        x = F.linear(x.flatten(1), self.conv3.weight.flatten(1), self.conv3.bias)
        x = self.act(self.conv3_bn(x.view(-1, self.conv3.out_channels, 1, 1))).flatten(1)
        x = self.dropout(self.act(self.fc1_bn(self.fc1(x))))
        # The writeup applies Swish to the logits too.
        return self.act(self.fc2(x))

    def _conv_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The two conv blocks through PyTorch's operators, arranged as ``forward`` describes."""
        if self.training and x.device.type == "cpu" and isinstance(self.conv1_bn, nn.Identity):
            n, _, h, w = x.shape
            # One channel: the same memory, but channels-last strides, which make
            # oneDNN produce a channels-last map for the pooling.
            x = self.pool(self.act(self.conv1(x.reshape(n, h, w, 1).permute(0, 3, 1, 2))))
        else:
            x = conv_act_pool_by_phases(x, self.conv1, self.act, self.conv1_bn)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.act(self.conv2_bn(self.conv2(x))))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The writeup's forward, layer by layer through the modules; ``forward`` must match it."""
        x = self.pool(self.act(self.conv1_bn(self.conv1(x))))
        x = self.pool(self.act(self.conv2_bn(self.conv2(x))))
        x = self.act(self.conv3_bn(self.conv3(x))).flatten(1)
        x = self.dropout(self.act(self.fc1_bn(self.fc1(x))))
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

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``forward``: the MLP has nothing to rearrange."""
        return self.forward(x)


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
