"""Speed paths for the training loop, kept out of the model definitions (``models.py``).

``accelerate`` is what the runner calls once per run: it returns the module to
train and evaluate, which computes the model's function faster (for LeNet-5:
its conv blocks as C kernels, by pooling phases or on channels-last strides),
and the tensors the optimizer should update (on the CPU, every parameter packed
into one). The model's parameters keep their names and values, so its
``state_dict`` (checkpoints, saved weights) is unchanged. ``graphed_step`` is the
CUDA-graph training step that ``train.fit`` replays on a GPU.

Modules: ``kernels`` builds the C kernels (``csrc/``) per vector instruction set,
``blocks`` wraps them as autograd Functions, ``lenet`` is LeNet-5's fast
forward, ``pooling_phases`` its operator path, ``calibrate`` decides
``kernels=auto``, ``packing`` packs parameters, ``cuda_graph`` captures a step.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from lenet_sweep.config import KERNEL_MODES, ConfigError
from lenet_sweep.fast import calibrate
from lenet_sweep.fast import kernels as kernel_builds
from lenet_sweep.fast.cuda_graph import graphed_step
from lenet_sweep.fast.kernels import Library, Unavailable
from lenet_sweep.fast.lenet import FastLeNet, fused_blocks_apply, unsupported
from lenet_sweep.fast.packing import pack_parameters
from lenet_sweep.models import LeNet5

__all__ = ["KERNEL_MODES", "FastPath", "accelerate", "graphed_step"]

log = logging.getLogger(__name__)
OPERATORS = "operators"


@dataclass(frozen=True)
class FastPath:
    """What ``accelerate`` returns."""

    module: nn.Module  # train and evaluate this: the model's function, its parameters
    parameters: list[torch.Tensor]  # give these to the optimizer
    kernels: str  # which path runs LeNet-5's conv blocks, e.g. "train=fused-avx2 eval=operators"


def accelerate(
    model: nn.Module,
    device: torch.device | str,
    kernels: str = "auto",
    batch_size: int = 64,
    eval_batch_size: int = 1000,
) -> FastPath:
    """The fast path for ``model`` (already on ``device``), trained at ``batch_size`` and evaluated at
    ``eval_batch_size``.

    ``kernels`` says whether LeNet-5's conv blocks run as C kernels on the CPU:
    ``off`` never; ``on`` wherever they apply (raises ``ConfigError`` when they
    cannot be built here); ``auto`` where a paired timing on this machine
    (``calibrate``, cached) shows them clearly faster than PyTorch's operators,
    decided separately for training and evaluation. The choice is logged once.
    After this call the model must stay on ``device``.
    """
    if kernels not in KERNEL_MODES:
        raise ConfigError(f"train.kernels={kernels!r}: must be one of {', '.join(KERNEL_MODES)}")
    device = torch.device(device)
    module, train_kernels, eval_kernels = model, None, None
    if _stands_in(model):
        train_kernels, eval_kernels = _choose_kernels(model, device, kernels, batch_size, eval_batch_size)
        module = FastLeNet(model, train_kernels, eval_kernels)
    elif kernels == "on":
        log.info("train.kernels=on: LeNet-5's C kernels do not apply to this model: PyTorch's operators")
    params = [p for p in model.parameters() if p.requires_grad]
    if params and device.type == "cpu":
        params = [pack_parameters(model)]
    return FastPath(module, params, f"train={_label(train_kernels)} eval={_label(eval_kernels)}")


def _label(kernels: Library | None) -> str:
    return OPERATORS if kernels is None else kernels.label


def _choose_kernels(
    model: LeNet5, device: torch.device, mode: str, batch_size: int, eval_batch_size: int
) -> tuple[Library | None, Library | None]:
    """The kernels for training and for evaluation (None: PyTorch's operators), as ``mode`` asks."""
    if mode == "off":
        return None, None
    reason = None if fused_blocks_apply(model) else "batch norm sits between a convolution and its Swish"
    if reason is None and device.type != "cpu":
        reason = f"they run on the CPU, not {device.type}"
    if reason is not None:
        log.info("train.kernels=%s: LeNet-5's C kernels do not apply (%s): PyTorch's operators", mode, reason)
        return None, None
    try:
        library = kernel_builds.library()
        difference = _difference(model, library)
        if difference is not None:
            raise Unavailable(f"the {library.label} kernels built here compute other values (by {difference:.3g})")
    except Unavailable as error:
        if mode == "on":
            raise ConfigError(f"train.kernels='on': {error} (train.kernels=auto or off run without them)") from None
        log.warning("train.kernels=auto: %s: LeNet-5's conv blocks run on PyTorch's operators, slower", error)
        return None, None
    if mode == "on":
        log.info("train.kernels=on: LeNet-5's conv blocks run on the C kernels (%s)", library.label)
        return library, library
    verdict, path, cached = calibrate.cached_or_measured(model, library, batch_size, eval_batch_size)
    chosen = (library if verdict.train.fused_wins else None, library if verdict.eval.fused_wins else None)
    log.info(
        "train.kernels=auto: train=%s eval=%s (%s, %s; %d threads: %s)",
        _label(chosen[0]),
        _label(chosen[1]),
        f"calibrated {verdict.measured}" if cached else "calibrated now",
        path or "not cached: other load disturbed the timing",
        torch.get_num_threads(),
        verdict.describe(batch_size, eval_batch_size),
    )
    return chosen


def _stands_in(model: nn.Module) -> bool:
    """Whether ``FastLeNet`` computes ``model``'s function: the model is the writeup's LeNet-5 and,
    on a few random images, gives the same logits (so that a change to ``LeNet5.forward`` cannot
    leave the fast path behind)."""
    if unsupported(model) is not None:
        return False
    difference = _difference(model, None)
    if difference is not None:
        log.warning(
            "the fast LeNet-5 path does not compute LeNet5.forward's function (max difference %.3g): "
            "the model runs as written, slower",
            difference,
        )
    return difference is None


# ``_difference``'s verdicts for this process, by model structure, forward and kernels: whether the fast path
# computes a model's function depends on the code, not on one run's initial weights, so a process that runs
# many jobs (the packed or joblib launcher's) probes each kind of model once.
_differences: dict[tuple, float | None] = {}


def _difference(model: LeNet5, kernels: Library | None) -> float | None:
    """The largest difference between ``FastLeNet``'s logits (with ``kernels``) and ``model``'s on a few
    random images, evaluated on a copy; None when they agree to float32 rounding."""
    forward = getattr(model.forward, "__func__", model.forward)  # the class's, or one set on this model
    key = (type(model), forward, repr(model), None if kernels is None else str(kernels.path))
    if key not in _differences:
        _differences[key] = _probed_difference(model, kernels)
    return _differences[key]


def _probed_difference(model: LeNet5, kernels: Library | None) -> float | None:
    probe_model = copy.deepcopy(model).cpu().eval()
    probe = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = probe_model(probe)
        got = FastLeNet(probe_model, kernels, kernels).eval()(probe)
    if torch.allclose(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True):
        return None
    return (got - expected).abs().max().item()
