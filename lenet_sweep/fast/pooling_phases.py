"""Convolution + activation + 2x2 max pooling computed by pooling phases, through PyTorch's operators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaxOverPhases(torch.autograd.Function):
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
    return MaxOverPhases.apply(act(y))
