"""LeNet-5's two conv + Swish + 2x2 max-pool blocks as C kernels on the CPU (``csrc/``).

The kernels are compiled on first use with the system's C compiler (``$CC``, else
``cc``) for this machine's processor and cached under
``$XDG_CACHE_HOME/lenet-sweep`` (default ``~/.cache/lenet-sweep``), keyed by the
source, the compiler and the processor, so a shared home across different
machines keeps one build per kind. Without a compiler, or if the build fails,
``kernel()`` logs one warning and returns None, and LeNet-5 runs the blocks with
PyTorch's operators instead: same function, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / "conv1_block.c", CSRC / "conv2_block.c"]
HEADERS = [CSRC / "simd.h"]
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp"]
IMAGE_SHAPE = (1, 28, 28)
POOLED1 = (12, 12, 6)  # conv1's pooled map, channels last
POOLED2 = (16, 4, 4)  # conv2's pooled map, NCHW: conv3 reads it flat
WINNERS2 = (4, 4, 16)  # conv2's window winners and Swish derivatives, channels last
_P = ctypes.c_void_p


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet-sweep"


def _processor() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(sorted({line for line in lines if line.startswith(wanted)}))


def _build(compiler: str) -> Path:
    """The compiled kernels' library, built once per source, compiler and processor."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [path.read_text() for path in SOURCES + HEADERS]
    key = hashlib.sha256("\0".join([*texts, compiler, version, _processor(), *FLAGS]).encode())
    target = cache_dir() / f"lenet_blocks-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: parallel jobs never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, *FLAGS, "-o", str(built), *map(str, SOURCES)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
        os.replace(built, target)
    return target


@functools.lru_cache(maxsize=None)
def kernel() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None (with one warning) when they cannot be built here."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        log.warning("no C compiler (%s): LeNet-5's conv blocks run on PyTorch's operators, slower", compiler)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
        log.warning("could not build LeNet-5's block kernels (%s) with %s (%s): they run on PyTorch's operators, "
                    "slower", CSRC, compiler, error)
        return None
    lib.conv1_forward.argtypes = [_P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    lib.conv1_backward.argtypes = [_P, _P, _P, _P, ctypes.c_int64, _P, _P, ctypes.c_int]
    lib.conv2_forward.argtypes = [_P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    lib.conv2_backward.argtypes = [_P, _P, _P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    return lib


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernels run LeNet-5's blocks for input ``x`` with conv1 ``weight``: float32
    images on the CPU, no gradient wanted for the images, and the kernels built."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and tuple(x.shape[1:]) == IMAGE_SHAPE
        and tuple(weight.shape) == (POOLED1[2], 1, 5, 5)
        and not x.requires_grad
        and kernel() is not None
    )


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("LeNet-5 block kernel: out of memory")


def _block_forward(entry, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   out_shape: tuple, winners_shape: tuple) -> tuple[torch.Tensor, ...]:
    """Runs a block's forward kernel on contiguous ``x``: (pooled map, window winners,
    Swish's derivative at the winners, the weight as the kernel read it)."""
    n = x.shape[0]
    out = torch.empty(n, *out_shape)
    phase = torch.empty(n, *winners_shape, dtype=torch.uint8)
    dact = torch.empty(n, *winners_shape)
    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    _check(entry(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), n, out.data_ptr(), phase.data_ptr(),
                 dact.data_ptr(), torch.get_num_threads()))
    return out, phase, dact, weight


class Conv1SiluPool(torch.autograd.Function):
    """conv1's block, ``max_pool2d(silu(conv2d(x, weight, bias)), 2)`` -> [N, 6, 12, 12], channels-last strides.

    Gradients flow to ``weight`` and ``bias`` (not to ``x``); ties in a pooling
    window send the gradient to its first maximum, as ``max_pool2d`` does. Runs
    on ``torch.get_num_threads()`` threads; the same count gives the same bits.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out, phase, dact, _ = _block_forward(kernel().conv1_forward, x, weight, bias, POOLED1, POOLED1)
        ctx.save_for_backward(x, phase, dact)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, phase, dact = ctx.saved_tensors
        grad = grad.permute(0, 2, 3, 1).contiguous()
        grad_weight = torch.empty(POOLED1[2], 1, 5, 5)
        grad_bias = torch.empty(POOLED1[2])
        _check(kernel().conv1_backward(x.data_ptr(), grad.data_ptr(), phase.data_ptr(), dact.data_ptr(), x.shape[0],
                                       grad_weight.data_ptr(), grad_bias.data_ptr(), torch.get_num_threads()))
        return None, grad_weight, grad_bias


class Conv2SiluPool(torch.autograd.Function):
    """conv2's block on conv1's output ``x`` [N, 6, 12, 12] -> [N, 16, 4, 4], contiguous.

    Gradients flow to ``x``, ``weight`` and ``bias``, as in ``Conv1SiluPool``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1).contiguous()  # a view when x comes from Conv1SiluPool
        out, phase, dact, weight = _block_forward(kernel().conv2_forward, x, weight, bias, POOLED2, WINNERS2)
        ctx.save_for_backward(x, weight, phase, dact)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, phase, dact = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        grad_weight = torch.empty_like(weight)
        grad_bias = torch.empty(weight.shape[0])
        _check(kernel().conv2_backward(x.data_ptr(), weight.data_ptr(), grad.data_ptr(), phase.data_ptr(),
                                       dact.data_ptr(), x.shape[0], grad_x.data_ptr(), grad_weight.data_ptr(),
                                       grad_bias.data_ptr(), torch.get_num_threads()))
        return grad_x.permute(0, 3, 1, 2), grad_weight, grad_bias
