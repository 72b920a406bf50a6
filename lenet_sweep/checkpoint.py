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
    """Write the state after ``epoch`` atomically (a kill mid-write leaves the previous checkpoint).

    The optimizer's state is saved per parameter, by name, whatever layout the
    device trains with (packed into one buffer on the CPU, one tensor per
    parameter on a GPU), so a run can continue on either.
    """
    state: dict[str, Any] = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer_by_name": optimizer_state_by_name(optimizer.state_dict(), model),
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
    # Checkpoints written before the by-name form hold the optimizer's own state_dict.
    by_name = state.get("optimizer_by_name") or optimizer_state_by_name(state["optimizer"], model)
    optimizer.load_state_dict(optimizer_state_for(optimizer, model, by_name))
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"], state["history"]


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _is_packed(optimizer_params: list, model: nn.Module) -> bool:
    """One flat parameter standing for all of ``model``'s (``fast.packing``), not the parameters themselves."""
    return len(optimizer_params) == 1 and len(_trainable(model)) > 1


def optimizer_state_by_name(saved: dict[str, Any], model: nn.Module) -> dict[str, dict[str, Any]]:
    """An optimizer ``state_dict`` over ``model``'s parameters (packed or not) as ``{parameter name: state}``.

    A packed state's buffers are cut back into each parameter's shape; values
    that are not per-element (a step count) are copied to every parameter.
    """
    indices = [i for group in saved["param_groups"] for i in group["params"]]
    named = _trainable(model)
    if len(indices) == len(named):
        return {name: dict(saved["state"].get(i, {})) for (name, _), i in zip(named, indices)}
    if len(indices) != 1:
        raise ValueError(f"optimizer state for {len(indices)} parameters does not fit a model with {len(named)}")
    packed = saved["state"].get(indices[0], {})
    by_name, offset = {}, 0
    for name, param in named:
        by_name[name] = {
            key: value[offset : offset + param.numel()].view_as(param).clone() if _per_element(value) else value
            for key, value in packed.items()
        }
        offset += param.numel()
    return by_name


def optimizer_state_for(
    optimizer: torch.optim.Optimizer, model: nn.Module, by_name: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``by_name`` as a ``state_dict`` that ``optimizer`` loads, in its own layout, keeping its own settings.

    Hyperparameters come from ``optimizer`` (the run's config decides them) so
    that device-specific ones (``fused``, ``capturable``) fit the device.
    """
    current = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    named = _trainable(model)
    missing = [name for name, _ in named if name not in by_name]
    if missing:
        raise ValueError(f"the checkpoint has no optimizer state for {', '.join(missing)}")
    if not _is_packed(params, model):
        index = {id(p): i for i, p in enumerate(params)}
        state = {index[id(p)]: by_name[name] for name, p in named if by_name[name]}
        return {"state": state, "param_groups": current["param_groups"]}
    per_param = [by_name[name] for name, _ in named]
    packed: dict[str, Any] = {}
    for key, first in per_param[0].items():
        if _per_element(first):  # momentum or moment buffers, in parameter order
            packed[key] = torch.cat([entry[key].flatten() for entry in per_param])
        else:  # a step count, the same for every parameter
            packed[key] = first
    return {"state": {0: packed} if packed else {}, "param_groups": current["param_groups"]}


def _per_element(value: Any) -> bool:
    return torch.is_tensor(value) and value.dim() > 0
