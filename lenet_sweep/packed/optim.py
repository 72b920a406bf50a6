"""One optimizer step for every member of a pack, with each member's own hyperparameters.

The parameters are ``PackedNetwork``'s flat buffer; learning rate, momentum and
weight decay are per-element tensors (each element carries its member's value),
so a step is a few elementwise kernels over the whole pack whatever M is, and a
CUDA graph can capture it. The update rules are ``torch.optim.SGD``'s and
``torch.optim.Adam``'s (defaults otherwise: no dampening or Nesterov; betas
0.9/0.999, eps 1e-8), and each member's state converts to and from its solo
optimizer's per-parameter state (``checkpoint.optimizer_state_by_name``'s form).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class PackedOptimizer:
    """SGD (with momentum) or Adam over ``flat`` (gradient ``flat_grad``), hyperparameters per member.

    ``member_of`` gives each element's member. ``momenta`` is ignored by Adam.
    """

    def __init__(
        self,
        name: str,
        flat: torch.Tensor,
        flat_grad: torch.Tensor,
        member_of: torch.Tensor,
        lrs: Sequence[float],
        momenta: Sequence[float],
        weight_decays: Sequence[float],
    ) -> None:
        if name not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {name!r}")
        self.name, self.flat, self.flat_grad, self.member_of = name, flat, flat_grad, member_of
        device = flat.device
        self.member_lr = torch.tensor(lrs, dtype=flat.dtype, device=device)
        self.member_momentum = torch.tensor(momenta, dtype=flat.dtype, device=device)
        self.member_weight_decay = torch.tensor(weight_decays, dtype=flat.dtype, device=device)
        self.neg_lr = torch.empty_like(flat)
        self.momentum = torch.empty_like(flat)
        self.weight_decay = torch.empty_like(flat)
        self.refresh_hyperparameters()
        # SGD: the momentum buffer; Adam: first and second moments. Zeros are a fresh optimizer's state.
        self.buffers = {key: torch.zeros_like(flat) for key in self.state_keys()}
        self.steps = torch.zeros((), dtype=flat.dtype, device=device)  # Adam's step count, all members alike

    def state_keys(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.name == "sgd" else ("exp_avg", "exp_avg_sq")

    def refresh_hyperparameters(self) -> None:
        """Spread the per-member values over the elements, in place (a captured graph reads these tensors)."""
        self.neg_lr.copy_(-self.member_lr[self.member_of])
        self.momentum.copy_(self.member_momentum[self.member_of])
        self.weight_decay.copy_(self.member_weight_decay[self.member_of])

    def freeze(self, member: int) -> None:
        """Stop updating ``member`` (lr 0, its state zeroed): a diverged member stays still in its slot."""
        self.member_lr[member] = 0.0
        self.refresh_hyperparameters()
        mask = self.member_of == member
        for buffer in self.buffers.values():
            buffer.masked_fill_(mask, 0.0)

    def zero_grad(self) -> None:
        self.flat_grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        grad = self.flat_grad.addcmul(self.weight_decay, self.flat)  # L2 as torch.optim adds it: g + wd * p
        if self.name == "sgd":
            buf = self.buffers["momentum_buffer"]
            buf.mul_(self.momentum).add_(grad)  # from zeros, the first step leaves buf = g, as torch's clone does
            self.flat.addcmul_(self.neg_lr, buf)
            return
        beta1, beta2 = ADAM_BETAS
        self.steps.add_(1)
        exp_avg, exp_avg_sq = self.buffers["exp_avg"], self.buffers["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - torch.pow(beta1, self.steps)
        bias_correction2_sqrt = (1 - torch.pow(beta2, self.steps)).sqrt()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        self.flat.addcdiv_(exp_avg * (self.neg_lr / bias_correction1), denom)

    def member_state(self, member: int, slices: dict[str, slice], shapes: dict[str, torch.Size]) -> dict[str, dict]:
        """``member``'s state by parameter name, as its solo optimizer's ``state_dict`` holds it (on the CPU)."""
        by_name = {}
        for name, where in slices.items():
            if self.name == "sgd" and float(self.member_momentum[member]) == 0.0:
                by_name[name] = {}  # torch's SGD keeps no buffer without momentum
                continue
            state = {key: self.buffers[key][where].view(shapes[name])[member].cpu().clone() for key in self.buffers}
            if self.name == "adam":
                state["step"] = self.steps.detach().cpu().clone()
            by_name[name] = state
        return by_name

    def load_member_state(
        self, member: int, by_name: dict[str, dict], slices: dict[str, slice], shapes: dict[str, torch.Size]
    ) -> None:
        """Put a solo optimizer's per-parameter state into ``member``'s elements (missing entries: fresh state)."""
        with torch.no_grad():
            for name, where in slices.items():
                state = by_name.get(name, {})
                for key, buffer in self.buffers.items():
                    slot = buffer[where].view(shapes[name])[member]
                    slot.copy_(state[key]) if key in state else slot.zero_()
                if self.name == "adam" and "step" in state:
                    self.steps.fill_(float(state["step"]))
