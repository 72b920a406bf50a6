"""LeNet-5's two conv + Swish + 2x2 max-pool blocks as C kernels on the CPU, as autograd Functions.

Through PyTorch's operators a block is five memory-bound passes over its
convolution's output per step (convolution, Swish, pooling; in backward the
pooling's zero fill and scatter, Swish's derivative). The kernels keep those
maps in vector registers and write only the pooled map, which window position
won each window and Swish's derivative there; backward reads those back.
Each Function takes the ``kernels.Library`` to run as its first argument.
"""

from __future__ import annotations

import torch

from lenet_sweep.fast.kernels import Library

IMAGE_SHAPE = (1, 28, 28)
POOLED1 = (6, 12, 12)  # conv1's pooled map
POOLED2 = (16, 4, 4)  # conv2's pooled map, NCHW: conv3 reads it flat
WINNERS2 = (4, 4, 16)  # conv2's window winners and Swish derivatives, channels last


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernels take input ``x`` with conv1 ``weight``: float32 images on the
    CPU, no gradient wanted for the images."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and tuple(x.shape[1:]) == IMAGE_SHAPE
        and tuple(weight.shape) == (POOLED1[0], 1, 5, 5)
        and not x.requires_grad
    )


def _call(entry, *args) -> None:
    """``entry`` on ``args`` (tensors as pointers to their data) and the thread count; 0 means done."""
    pointers = [arg.data_ptr() if isinstance(arg, torch.Tensor) else arg for arg in args]
    if entry(*pointers, torch.get_num_threads()) != 0:
        raise MemoryError("LeNet-5 block kernel: out of memory")


def _block_forward(
    entry, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_shape: tuple, winners_shape: tuple
) -> tuple[torch.Tensor, ...]:
    """Runs a block's forward kernel on contiguous ``x``: (pooled map, window winners,
    Swish's derivative at the winners, the weight as the kernel read it)."""
    n = x.shape[0]
    out = torch.empty(n, *out_shape)
    phase = torch.empty(n, *winners_shape, dtype=torch.uint8)
    dact = torch.empty(n, *winners_shape)
    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    _call(entry, x, weight, bias, n, out, phase, dact)
    return out, phase, dact, weight


class Conv1SiluPool(torch.autograd.Function):
    """conv1's block, ``max_pool2d(silu(conv2d(x, weight, bias)), 2)`` -> [N, 6, 12, 12], contiguous.

    Gradients flow to ``weight`` and ``bias`` (not to ``x``); ties in a pooling
    window send the gradient to its first maximum, as ``max_pool2d`` does. Runs
    on ``torch.get_num_threads()`` threads; the same count gives the same bits.
    """

    @staticmethod
    def forward(ctx, lib: Library, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out, phase, dact, _ = _block_forward(lib.cdll.conv1_forward, x, weight, bias, POOLED1, POOLED1)
        ctx.lib = lib
        ctx.save_for_backward(x, phase, dact)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, phase, dact = ctx.saved_tensors
        grad = grad.contiguous()
        grad_weight = torch.empty(POOLED1[0], 1, 5, 5)
        grad_bias = torch.empty(POOLED1[0])
        _call(ctx.lib.cdll.conv1_backward, x, grad, phase, dact, x.shape[0], grad_weight, grad_bias)
        return None, None, grad_weight, grad_bias


class Conv2SiluPool(torch.autograd.Function):
    """conv2's block on conv1's output ``x`` [N, 6, 12, 12] -> [N, 16, 4, 4], contiguous.

    Gradients flow to ``x``, ``weight`` and ``bias``, as in ``Conv1SiluPool``.
    """

    @staticmethod
    def forward(ctx, lib: Library, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out, phase, dact, weight = _block_forward(lib.cdll.conv2_forward, x, weight, bias, POOLED2, WINNERS2)
        ctx.lib = lib
        ctx.save_for_backward(x, weight, phase, dact)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, phase, dact = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        grad_weight = torch.empty_like(weight)
        grad_bias = torch.empty(weight.shape[0])
        _call(ctx.lib.cdll.conv2_backward, x, weight, grad, phase, dact, x.shape[0], grad_x, grad_weight, grad_bias)
        return None, grad_x, grad_weight, grad_bias
