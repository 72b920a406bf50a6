"""Per-epoch checkpoints: enough state to continue a run bit-for-bit on the CPU.

A checkpoint holds the weights, the optimizer, every random generator the loop
draws from, the last completed epoch and the metrics logged so far (so a resume
can fill in an epoch whose metrics did not reach MLflow before the process died).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    history: list[dict[str, float]],
) -> None:
    """Write the state after ``epoch`` atomically (a kill mid-write leaves the previous checkpoint)."""
    state: dict[str, Any] = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[int, list[dict[str, float]]]:
    """Restore ``model``, ``optimizer`` and the RNGs in place; return (last epoch, metric history)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(_matching_optimizer_state(state["optimizer"], optimizer))
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"], state["history"]


def _matching_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved`` in ``optimizer``'s layout: a checkpoint from before packed parameters
    (``train.pack_parameters``) holds one state per parameter, which is concatenated, in
    parameter order, into the one state of an optimizer over the packed parameter."""
    saved_params = [i for group in saved["param_groups"] for i in group["params"]]
    packed = [p for group in optimizer.param_groups for p in group["params"]]
    if len(saved_params) == len(packed) or len(packed) != 1 or len(saved["param_groups"]) != 1:
        return saved
    per_param = [saved["state"].get(i, {}) for i in saved_params]
    state: dict[str, Any] = {}
    for key, first in per_param[0].items():
        if torch.is_tensor(first) and first.dim() > 0:  # momentum or moment buffers, in parameter order
            state[key] = torch.cat([entry[key].flatten() for entry in per_param])
        else:  # a step count, the same for every parameter
            state[key] = first
    return {"state": {0: state} if state else {}, "param_groups": [{**saved["param_groups"][0], "params": [0]}]}
