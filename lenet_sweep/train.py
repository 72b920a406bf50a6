"""The training loop: the writeup's recipe, fed from tensors already on the device.

Batches are slices of a per-epoch permutation of the in-memory dataset, flips
are applied to the batch tensor, and loss and correct counts accumulate on the
device: the host reads them once per epoch, so nothing syncs inside an epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from lenet_sweep import fast

if TYPE_CHECKING:
    from lenet_sweep.fast.cuda_graph import GraphedTrainStep


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class DeviceData:
    """Normalised inputs ``[N, 1, 28, 28]`` and int64 labels, on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # The validation split (data.val_size), evaluated after every epoch like the test set; None without one.
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float  # percent
    test_loss: float
    test_acc: float  # percent
    epoch_seconds: float
    val_loss: float | None = None  # None without a validation split
    val_acc: float | None = None  # percent

    def as_dict(self) -> dict[str, float]:
        """The metrics a run logs for the epoch; ``val_*`` only with a validation split."""
        metrics = {
            "train_loss": self.train_loss,
            "train_acc": self.train_acc,
            "test_loss": self.test_loss,
            "test_acc": self.test_acc,
            "epoch_seconds": self.epoch_seconds,
        }
        if self.val_acc is not None:
            metrics.update(val_loss=self.val_loss, val_acc=self.val_acc)
        return metrics

    def log_line(self) -> str:
        val = "" if self.val_acc is None else f"Val Loss {self.val_loss:.4f}, Val Acc {self.val_acc:.2f}% | "
        return (
            f"Epoch {self.epoch}: Train Loss {self.train_loss:.4f}, Train Acc {self.train_acc:.2f}% | {val}"
            f"Test Loss {self.test_loss:.4f}, Test Acc {self.test_acc:.2f}% ({self.epoch_seconds:.2f}s)"
        )


def make_optimizer(
    params: Iterable[torch.Tensor], name: str, lr: float, momentum: float | None = None, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``sgd`` (with momentum) or ``adam`` over ``params``, in PyTorch's fused implementation
    (one kernel for all parameters instead of a Python loop of small ops)."""
    if name not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {name!r}")
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay, fused=fused)
    # capturable: its step count stays on the GPU, so the step can run inside a CUDA graph.
    capturable = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused, capturable=capturable)


def random_hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``x`` with the samples where the bool mask ``flip`` is set mirrored left-right."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    hflip_p: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
    graphed: GraphedTrainStep | None = None,
) -> tuple[float, float]:
    """One pass over ``x``/``y`` in shuffled batches; returns (mean loss per sample, accuracy %).

    With ``graphed`` (``fast.graphed_step``, on a GPU), the full batches are replays
    of a captured step; the last, smaller batch runs eagerly.
    """
    model.train()
    n = len(y)
    # Draw the epoch's order and flips on the CPU generator (reproducible across
    # devices), then move them once.
    order = torch.randperm(n, generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < hflip_p).to(x.device) if hflip_p > 0 else None
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    first_eager = 0
    if graphed is not None:
        first_eager = graphed.train_full_batches(order, flips, progress)
        loss_sum += graphed.loss_sum
        correct += graphed.correct
    for start in range(first_eager, n, batch_size):
        idx = order[start : start + batch_size]
        # index_select is a plain gather; x[idx] goes through advanced indexing, ~5x slower here.
        inputs, targets = x.index_select(0, idx), y.index_select(0, idx)
        if flips is not None:
            inputs = random_hflip(inputs, flips.index_select(0, idx))
        with _autocast(x.device, amp_dtype):
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, targets)
        # Zeroed in place, never dropped: packed parameters and a captured graph both hold on to them.
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=len(idx))
        correct += (logits.argmax(1) == targets).sum()
        if progress is not None:
            progress(len(idx))
    return loss_sum.item() / n, 100.0 * correct.item() / n


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """(mean loss per sample, accuracy %) of ``model`` on ``x``/``y``, without augmentation."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(y), batch_size):
        inputs, targets = x[start : start + batch_size], y[start : start + batch_size]
        with _autocast(x.device, amp_dtype):
            logits = model(inputs)
        loss_sum += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        correct += (logits.argmax(1) == targets).sum()
    return loss_sum.item() / len(y), 100.0 * correct.item() / len(y)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceData,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    generator: torch.Generator,
    hflip_p: float = 0.0,
    start_epoch: int = 1,
    amp_dtype: torch.dtype | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    progress_factory: Callable[[int, int], Callable[[int], None]] | None = None,
) -> list[EpochMetrics]:
    """Train epochs ``start_epoch..epochs``, evaluating on the validation split (if any) and the test set after each.

    ``on_epoch_end`` sees every epoch's metrics (logging, checkpoints). Raises
    ``DivergedError`` as soon as an epoch's training loss is not finite.
    """
    graphed = fast.graphed_step(model, optimizer, data.train_x, data.train_y, batch_size, hflip_p, amp_dtype)
    history = []
    for epoch in range(start_epoch, epochs + 1):
        progress = progress_factory(epoch, len(data.train_y)) if progress_factory else None
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, data.train_x, data.train_y, batch_size, generator, hflip_p, amp_dtype, progress, graphed
        )
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch}")
        val_loss = val_acc = None
        if data.val_x is not None:
            val_loss, val_acc = evaluate(model, data.val_x, data.val_y, eval_batch_size, amp_dtype)
        test_loss, test_acc = evaluate(model, data.test_x, data.test_y, eval_batch_size, amp_dtype)
        seconds = time.perf_counter() - started
        metrics = EpochMetrics(epoch, train_loss, train_acc, test_loss, test_acc, seconds, val_loss, val_acc)
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return history
