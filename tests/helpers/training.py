"""Optimizer steps as the training loop takes them, for tests that compare models step by step."""

from __future__ import annotations

import torch


def train_steps(model, optimizer, x, y, steps: int) -> list[float]:
    """``steps`` optimizer steps on the fixed batch ``x``/``y``, as the training loop takes them; the losses."""
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
