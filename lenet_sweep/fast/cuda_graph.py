"""The GPU training step as one CUDA graph: a replay per batch instead of dozens of kernel launches.

LeNet-5 on MNIST is so small that an eager GPU step is bound by Python and
kernel-launch overhead, not by the GPU. ``GraphedTrainStep`` records one whole
step for a fixed batch size (gather the batch by index, flip, forward, loss,
backward, optimizer step, add to the epoch's loss and correct counts) and
replays it; per batch the host only copies the batch's indices into a static
tensor and launches the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn


class GraphedTrainStep:
    """One training step on CUDA for batches of exactly ``batch_size``, captured once and replayed.

    The warm-up steps that capture needs are undone afterwards (weights, buffers
    and optimizer state restored), so training starts from the same state as the
    eager loop would.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        hflip: bool,
        amp_dtype: torch.dtype | None = None,
        warmup_steps: int = 3,
    ) -> None:
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.amp_dtype = amp_dtype
        device = x.device
        self.idx = torch.arange(batch_size, device=device)
        # The epoch's flip draw for every sample; each step gathers its batch's share.
        self.flips = torch.zeros(len(y), dtype=torch.bool, device=device) if hflip else None
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        saved_model = {k: v.clone() for k, v in model.state_dict().items()}
        saved_optimizer = {
            param: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
            for param, state in optimizer.state.items()
        }
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._step()
        with torch.no_grad():
            for key, value in model.state_dict().items():
                value.copy_(saved_model[key])
            # A state that did not exist before is equivalent to zeros (fresh momentum, step 0).
            for param, state in optimizer.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        before = saved_optimizer.get(param, {}).get(key)
                        value.copy_(before) if before is not None else value.zero_()

    def _step(self) -> None:
        inputs = self.x.index_select(0, self.idx)
        targets = self.y.index_select(0, self.idx)
        if self.flips is not None:
            flip = self.flips.index_select(0, self.idx)
            inputs = torch.where(flip.view(-1, 1, 1, 1), inputs.flip(-1), inputs)
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=False) if self.amp_dtype else nullcontext()
        )
        with autocast:
            logits = self.model(inputs)
            loss = nn.functional.cross_entropy(logits, targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        self.loss_sum.add_(loss.detach().float(), alpha=len(self.idx))
        self.correct.add_((logits.argmax(1) == targets).sum())

    def train_full_batches(
        self, order: torch.Tensor, flips: torch.Tensor | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Train on every full batch of the epoch's ``order`` (with its per-sample ``flips`` when
        flipping), summing into ``loss_sum`` and ``correct``; returns how many samples that covered."""
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.flips is not None:
            self.flips.copy_(flips)
        batch_size = len(self.idx)
        covered = len(order) - len(order) % batch_size
        for start in range(0, covered, batch_size):
            self.idx.copy_(order[start : start + batch_size])
            self.graph.replay()
            if progress is not None:
                progress(batch_size)
        return covered


def graphed_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    hflip_p: float = 0.0,
    amp_dtype: torch.dtype | None = None,
) -> GraphedTrainStep | None:
    """The captured training step ``train.train_one_epoch`` replays when ``x`` is on a GPU; ``None`` on the CPU."""
    if not x.is_cuda or len(y) < batch_size:
        return None
    return GraphedTrainStep(model, optimizer, x, y, batch_size, hflip_p > 0, amp_dtype)
