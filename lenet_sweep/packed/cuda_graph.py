"""A pack's training step as one CUDA graph, as ``fast.cuda_graph`` captures the solo step.

Per replay the graph reads the next full batch of every member from the epoch's
orders by itself (a position counter on the device advances inside the graph),
so an epoch is a loop of replays with nothing else launched or copied per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lenet_sweep.packed.trainer import PackedTraining


class GraphedPackStep:
    """``training.step`` for full batches, captured once (after warm-up steps that are undone) and replayed."""

    def __init__(self, training: PackedTraining, warmup_steps: int = 3) -> None:
        self.training = training
        device, members, n = training.device, len(training.specs), len(training.data.train_y)
        batch_size = training.shape.batch_size
        self.batch_size = batch_size
        self.orders = torch.arange(n, device=device).repeat(members, 1)
        self.flips = torch.zeros(members, n, dtype=torch.bool, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.loss_sum = torch.zeros(members, device=device)
        self.correct = torch.zeros(members, dtype=torch.long, device=device)
        saved = self._state()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        with torch.no_grad():
            for tensor, value in zip(self._tensors(), saved):
                tensor.copy_(value)

    def _tensors(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, batch-norm buffers, optimizer state."""
        training = self.training
        return [
            training.net.flat,
            *training.net.buffers(),
            *training.optimizer.buffers.values(),
            training.optimizer.steps,
        ]

    def _state(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._tensors()]

    def _step(self) -> None:
        idx = self.orders.index_select(1, self.position + self.offsets)
        self.training.step(idx, self.flips, self.loss_sum, self.correct)
        self.position.add_(self.batch_size)

    def train_full_batches(self, orders: torch.Tensor, flips: torch.Tensor) -> int:
        """Train every member on every full batch of its ``orders`` [M, n] (with ``flips`` [M, n]), summing into
        ``loss_sum`` and ``correct``; returns how many samples per member that covered."""
        self.orders.copy_(orders)
        self.flips.copy_(flips)
        self.position.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()
        n = orders.shape[1]
        covered = n - n % self.batch_size
        for _ in range(covered // self.batch_size):
            self.graph.replay()
        return covered
