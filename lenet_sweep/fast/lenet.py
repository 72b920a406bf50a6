"""LeNet-5's forward arranged for speed: the same function as ``models.LeNet5.forward``.

Each conv + Swish + 2x2 max-pool block runs one of two ways:

- the C kernels (``blocks``), on the CPU without batch norm, when a library is given;
- PyTorch's operators, arranged: CPU training without batch norm runs conv1 on
  channels-last strides, where ``max_pool2d``'s CPU kernel is about 10x faster
  than on NCHW; elsewhere (evaluation, batch norm, a GPU) conv1 (+ batch norm)
  + Swish + pool runs by pooling phases; conv2 and its pooling run channels-last.

conv3 covers its whole 4x4 input, so it runs as the matrix product it amounts to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lenet_sweep.fast import blocks
from lenet_sweep.fast.kernels import Library
from lenet_sweep.fast.pooling_phases import conv_act_pool_by_phases
from lenet_sweep.models import LeNet5

# (in, out, kernel) of the convolutions the arrangement assumes, all stride 1, unpadded, with bias.
CONVS = {"conv1": (1, 6, 5), "conv2": (6, 16, 5), "conv3": (16, 120, 4)}


def _is_plain_conv(conv: nn.Module, shape: tuple[int, int, int]) -> bool:
    return (
        type(conv) is nn.Conv2d
        and (conv.in_channels, conv.out_channels, conv.kernel_size) == (shape[0], shape[1], (shape[2], shape[2]))
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
        and conv.padding_mode == "zeros"
    )


def unsupported(model: nn.Module) -> str | None:
    """Why ``FastLeNet`` cannot stand in for ``model``, or None when it can: the model must
    be a ``LeNet5`` (not a subclass, whose forward may differ) with Swish, 2x2 max pooling
    and the writeup's convolutions."""
    if type(model) is not LeNet5:
        return f"{type(model).__name__} is not LeNet5"
    if type(model.act) is not nn.SiLU:
        return f"the activation is {type(model.act).__name__}, not Swish (SiLU)"
    pool = model.pool
    if not (
        type(pool) is nn.MaxPool2d
        and pool.kernel_size in (2, (2, 2))
        and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode
        and not pool.return_indices
    ):
        return f"the pooling is {pool}, not 2x2 max pooling"
    for name, shape in CONVS.items():
        if not _is_plain_conv(getattr(model, name), shape):
            return f"{name} is {getattr(model, name)}, not the writeup's"
    return None


def fused_blocks_apply(model: LeNet5) -> bool:
    """Whether the C kernels' blocks are ``model``'s: no batch norm between a convolution and its Swish."""
    return type(model.conv1_bn) is nn.Identity and type(model.conv2_bn) is nn.Identity


class FastLeNet(nn.Module):
    """``model``'s function with its conv blocks on the given paths; its parameters are ``model``'s.

    ``train_kernels`` / ``eval_kernels``: the C kernels to run the blocks with in
    training / evaluation mode, or None for PyTorch's operators. Inputs the kernels
    do not take (not float32 on the CPU, images that want a gradient) run on the
    operators.
    """

    def __init__(
        self, model: LeNet5, train_kernels: Library | None = None, eval_kernels: Library | None = None
    ) -> None:
        super().__init__()
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"FastLeNet cannot stand in for this model: {reason}")
        if (train_kernels or eval_kernels) and not fused_blocks_apply(model):
            raise ValueError("the C kernels have no batch norm between a convolution and its Swish")
        self.model = model
        self.train_kernels, self.eval_kernels = train_kernels, eval_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        kernels = self.train_kernels if self.training else self.eval_kernels
        if kernels is not None and blocks.applies(x, m.conv1.weight):
            x = blocks.Conv1SiluPool.apply(kernels, x, m.conv1.weight, m.conv1.bias)
            x = blocks.Conv2SiluPool.apply(kernels, x, m.conv2.weight, m.conv2.bias)
        else:
            x = self._operator_blocks(x)
        x = F.linear(x.flatten(1), m.conv3.weight.flatten(1), m.conv3.bias)
        x = m.act(m.conv3_bn(x.view(-1, m.conv3.out_channels, 1, 1))).flatten(1)
        x = m.dropout(m.act(m.fc1_bn(m.fc1(x))))
        return m.act(m.fc2(x))

    def _operator_blocks(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.training and x.device.type == "cpu" and isinstance(m.conv1_bn, nn.Identity):
            n, _, h, w = x.shape
            # One channel: the same memory, but channels-last strides, which make
            # oneDNN produce a channels-last map for the pooling.
            x = m.pool(m.act(m.conv1(x.reshape(n, h, w, 1).permute(0, 3, 1, 2))))
        else:
            x = conv_act_pool_by_phases(x, m.conv1, m.act, m.conv1_bn)
            x = x.contiguous(memory_format=torch.channels_last)
        return m.pool(m.act(m.conv2_bn(m.conv2(x))))
