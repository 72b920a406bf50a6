"""LeNet-5's conv1 + Swish + 2x2 max-pool as one C kernel on the CPU (``csrc/conv1_silu_pool.c``).

The kernel is compiled on first use with the system's C compiler (``$CC``, else
``cc``) for this machine's processor and cached under
``$XDG_CACHE_HOME/lenet-sweep`` (default ``~/.cache/lenet-sweep``), keyed by the
source, the compiler and the processor, so a shared home across different
machines keeps one build per kind. Without a compiler, or if the build fails,
``kernel()`` logs one warning and returns None, and LeNet-5 runs the block with
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

SOURCE = Path(__file__).with_name("csrc") / "conv1_silu_pool.c"
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp"]
IMAGE_SHAPE = (1, 28, 28)
POOLED = (12, 12, 6)  # the pooled map, channels last
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
    """The compiled kernel's path, compiling it once per source, compiler and processor."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, _processor(), *FLAGS]).encode())
    target = cache_dir() / f"conv1_silu_pool-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: parallel jobs never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
        os.replace(built, target)
    return target


@functools.lru_cache(maxsize=None)
def kernel() -> Optional[ctypes.CDLL]:
    """The loaded kernel, or None (with one warning) when it cannot be built here."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        log.warning("no C compiler (%s): LeNet-5's conv1 block runs on PyTorch's operators, slower", compiler)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
        log.warning("could not build %s with %s (%s): LeNet-5's conv1 block runs on PyTorch's operators, slower",
                    SOURCE.name, compiler, error)
        return None
    lib.conv1_forward.argtypes = [_P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    lib.conv1_backward.argtypes = [_P, _P, _P, _P, ctypes.c_int64, _P, _P, ctypes.c_int]
    return lib


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel computes conv1's block for input ``x`` and conv1 ``weight``: float32
    LeNet-5 images on the CPU, no gradient wanted for the images, and the kernel built."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and tuple(x.shape[1:]) == IMAGE_SHAPE
        and tuple(weight.shape) == (POOLED[2], 1, 5, 5)
        and not x.requires_grad
        and kernel() is not None
    )


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("conv1_silu_pool: out of memory")


class Conv1SiluPool(torch.autograd.Function):
    """``max_pool2d(silu(conv2d(x, weight, bias)), 2)`` -> [N, 6, 12, 12], channels-last strides.

    Gradients flow to ``weight`` and ``bias`` (not to ``x``); ties in a pooling
    window send the gradient to its first maximum, as ``max_pool2d`` does. Runs
    on ``torch.get_num_threads()`` threads; the same count gives the same bits.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n = x.shape[0]
        out = torch.empty(n, *POOLED)
        phase = torch.empty(n, *POOLED, dtype=torch.uint8)
        dact = torch.empty(n, *POOLED)
        weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
        _check(kernel().conv1_forward(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), n, out.data_ptr(),
                                      phase.data_ptr(), dact.data_ptr(), torch.get_num_threads()))
        ctx.save_for_backward(x, phase, dact)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, phase, dact = ctx.saved_tensors
        grad = grad.permute(0, 2, 3, 1).contiguous()
        grad_weight = torch.empty(POOLED[2], 1, 5, 5)
        grad_bias = torch.empty(POOLED[2])
        _check(kernel().conv1_backward(x.data_ptr(), grad.data_ptr(), phase.data_ptr(), dact.data_ptr(), x.shape[0],
                                       grad_weight.data_ptr(), grad_bias.data_ptr(), torch.get_num_threads()))
        return None, grad_weight, grad_bias
