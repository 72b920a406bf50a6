"""M same-shape networks as one: stacked parameters, grouped convolutions, batched matrix products.

``PackedNetwork`` holds the parameters and buffers of M copies of one of
``models``' networks, each stacked along a leading member axis (``conv1.weight``
is ``[M, 6, 1, 5, 5]``), under the solo model's names. Its ``forward`` computes
every member's ``models`` forward at once: convolutions with ``groups=M`` (the
members' images are the channels), dense layers as ``baddbmm`` over the member
axis, batch norm over ``M * C`` channels (per member and channel: the same
statistics as each solo layer). Member i's function is exactly its solo model's;
only float32 rounding (other kernels) differs.

The trainable parameters live in one flat buffer, member axis first within each
parameter, so that ``packed.optim`` updates all members with a few elementwise
kernels and per-element hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lenet_sweep.models import build_model

BN_MOMENTUM = 0.1  # nn.BatchNorm's defaults, as the solo models use them
BN_EPS = 1e-5


def _grouped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """``x`` [B, groups * in, H, W] through member-wise convolutions ``weight`` [M, out, in, k, k]: [B, M * out, ...].

    One grouped convolution on a GPU; on the CPU one convolution per member, which oneDNN runs 3-10x
    faster than its grouped kernel on these few channels per group (measured on 2 Xeon cores).
    """
    if x.is_cuda or groups == 1:
        return F.conv2d(x, weight.flatten(0, 1), bias.flatten(), groups=groups)
    inputs = x.chunk(groups, dim=1)
    return torch.cat([F.conv2d(inputs[i], weight[i], bias[i]) for i in range(groups)], dim=1)


class PackedNetwork(nn.Module):
    """M networks of one architecture (``lenet`` or ``mlp``) with one regularization, trained as one.

    ``dropout_masks(shape)`` returns the scaled keep-masks ``[M, B, C]`` for the
    dropout layer in training (the trainer draws them from each member's own
    random stream); it is not called when the networks have no dropout.
    """

    def __init__(self, arch: str, dropout: float, batchnorm: bool, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.arch, self.dropout, self.batchnorm = arch, dropout, batchnorm
        self.members = len(members)
        template = members[0]
        self.param_names = [name for name, p in template.named_parameters() if p.requires_grad]
        stacked = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]) for name in self.param_names
        }
        self.flat = torch.cat([stacked[name].flatten() for name in self.param_names])
        self.flat_grad = torch.zeros_like(self.flat)
        self.params: dict[str, torch.Tensor] = {}
        offset = 0
        for name in self.param_names:
            size = stacked[name].numel()
            # A leaf sharing the flat buffer's memory, whose gradient is a view of the flat gradient:
            # backward accumulates into the flat gradient in place (as fast.packing does for one model).
            leaf = nn.Parameter(self.flat[offset : offset + size].view_as(stacked[name]))
            leaf.grad = self.flat_grad[offset : offset + size].view_as(stacked[name])
            self.params[name] = leaf
            offset += size
        self.buffer_names = [name for name, _ in template.named_buffers()]
        for name in self.buffer_names:
            self.register_buffer(
                name.replace(".", "__"), torch.stack([dict(m.named_buffers())[name].detach().clone() for m in members])
            )
        self.dropout_masks: Callable[[torch.Size], torch.Tensor] | None = None

    def member_offsets(self) -> torch.Tensor:
        """The member each element of ``flat`` belongs to (int64, ``flat``'s length)."""
        index = [
            torch.arange(self.members, device=self.flat.device).repeat_interleave(p[0].numel())
            for p in self.params.values()
        ]
        return torch.cat(index)

    def buffer(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s ``state_dict`` as its solo model has it (same names, shapes, order), on the CPU."""
        state = {name: self.params[name][i].detach().cpu().clone() for name in self.param_names}
        state.update({name: self.buffer(name)[i].detach().cpu().clone() for name in self.buffer_names})
        solo_order = build_model(self.arch, self.dropout, self.batchnorm).state_dict()
        return {name: state[name] for name in solo_order}

    def load_member(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Put a solo model's ``state_dict`` into member ``i``'s slot."""
        with torch.no_grad():
            for name in self.param_names:
                self.params[name][i].copy_(state[name])
            for name in self.buffer_names:
                self.buffer(name)[i].copy_(state[name])

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """Logits ``[M, B, 10]``.

        ``x`` is ``[B, M, 28, 28]`` (member m's batch in channel m), or with
        ``shared_input`` ``[B, 1, 28, 28]``, one batch every member sees (evaluation).
        """
        if self.arch == "lenet":
            return self._lenet(x, shared_input)
        return self._mlp(x, shared_input)

    def _lenet(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        p, m = self.params, self.members
        batch = x.shape[0]
        # With one input channel and a shared input, the M groups are one plain convolution over M*6 filters.
        h = _grouped_conv(x, p["conv1.weight"], p["conv1.bias"], 1 if shared_input else m)
        h = F.max_pool2d(F.silu(self._bn2d(h, "conv1_bn")), 2)
        h = _grouped_conv(h, p["conv2.weight"], p["conv2.bias"], m)
        h = F.max_pool2d(F.silu(self._bn2d(h, "conv2_bn")), 2)
        # conv3 covers its whole 4x4 input: per member the matrix product it amounts to.
        h = h.view(batch, m, -1).transpose(0, 1)
        h = F.silu(self._bn_dense(self._dense(h, "conv3", p["conv3.weight"].flatten(2)), "conv3_bn"))
        h = F.silu(self._bn_dense(self._dense(h, "fc1"), "fc1_bn"))
        h = self._dropout(h)
        return F.silu(self._dense(h, "fc2"))

    def _mlp(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        batch = x.shape[0]
        h = (
            x.reshape(batch, 1, -1).expand(batch, self.members, -1)
            if shared_input
            else x.reshape(batch, self.members, -1)
        )
        h = h.transpose(0, 1)
        h = F.silu(self._bn_dense(self._dense(h, "fc1"), "fc1_bn"))
        h = F.silu(self._bn_dense(self._dense(h, "fc2"), "fc2_bn"))
        h = self._dropout(h)
        return self._dense(h, "fc3")

    def _dense(self, h: torch.Tensor, layer: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` [M, B, in] through member-wise linear layer ``layer``: [M, B, out]."""
        weight = self.params[f"{layer}.weight"] if weight is None else weight
        return torch.baddbmm(self.params[f"{layer}.bias"].unsqueeze(1), h, weight.transpose(1, 2))

    def _bn2d(self, h: torch.Tensor, layer: str) -> torch.Tensor:
        if not self.batchnorm:
            return h
        return self._batch_norm(h, layer)

    def _bn_dense(self, h: torch.Tensor, layer: str) -> torch.Tensor:
        """Batch norm of ``h`` [M, B, C] per member and channel, as ``M * C`` channels of a [B, M*C] batch."""
        if not self.batchnorm:
            return h
        members, batch, channels = h.shape
        flat = self._batch_norm(h.transpose(0, 1).reshape(batch, members * channels), layer)
        return flat.view(batch, members, channels).transpose(0, 1)

    def _batch_norm(self, h: torch.Tensor, layer: str) -> torch.Tensor:
        if self.training:
            self.buffer(f"{layer}.num_batches_tracked").add_(1)
        return F.batch_norm(
            h,
            self.buffer(f"{layer}.running_mean").view(-1),
            self.buffer(f"{layer}.running_var").view(-1),
            self.params[f"{layer}.weight"].flatten(),
            self.params[f"{layer}.bias"].flatten(),
            self.training,
            BN_MOMENTUM,
            BN_EPS,
        )

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0:
            return h
        return h * self.dropout_masks(h.shape[1:])
