"""A pack's training loop: ``train.fit``'s recipe for M members at once, each member its own run's numbers.

Each member keeps the random streams its solo run has: a ``torch.Generator``
seeded with its seed draws the epoch's order and flips (as ``train.fit`` draws
them), and a second generator, in the state ``torch.manual_seed(seed)`` left
after building the model, draws its dropout masks as the global generator does
for the solo run on the CPU. Batches are per member (its own order); one
forward, backward and optimizer step serves all members. After each epoch a
member whose training loss is not finite is dropped alone: it is frozen in its
slot (zeros, learning rate 0) and reported, and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lenet_sweep.models import build_model
from lenet_sweep.packed.networks import PackedNetwork
from lenet_sweep.packed.optim import PackedOptimizer
from lenet_sweep.train import DeviceData, DivergedError, EpochMetrics


@dataclass(frozen=True)
class PackShape:
    """What every member of a pack shares: the network's shapes, the optimizer's rule, the batches."""

    arch: str
    dropout: float
    batchnorm: bool
    optimizer: str
    batch_size: int
    eval_batch_size: int


@dataclass(frozen=True)
class MemberSpec:
    """What one member has of its own."""

    seed: int
    lr: float
    momentum: float = 0.0  # SGD only; 0 is plain SGD
    weight_decay: float = 0.0
    hflip_p: float = 0.0


@dataclass
class MemberState:
    """A member's whole training state in its solo run's form (what ``checkpoint`` saves and loads)."""

    model: dict[str, torch.Tensor]  # the solo model's state_dict
    optimizer_by_name: dict[str, dict]  # ``checkpoint.optimizer_state_by_name``'s form
    generator: torch.Tensor  # order and flips: ``torch.Generator().manual_seed(seed)``'s state
    torch_rng: torch.Tensor  # dropout: the global CPU generator's state in the solo run


def fresh_state(shape: PackShape, seed: int) -> MemberState:
    """A member's state before its first step, as ``job.build_training`` seeds a solo run."""
    torch.manual_seed(seed)
    model = build_model(shape.arch, shape.dropout, shape.batchnorm)
    return MemberState(model.state_dict(), {}, torch.Generator().manual_seed(seed).get_state(), torch.get_rng_state())


class PackedTraining:
    """Members ``specs`` of one ``shape``, starting from ``states``, on ``data``'s device."""

    def __init__(
        self, shape: PackShape, specs: Sequence[MemberSpec], states: Sequence[MemberState], data: DeviceData
    ) -> None:
        self.shape, self.specs, self.data = shape, list(specs), data
        self.device = data.train_x.device
        models = []
        for state in states:
            model = build_model(shape.arch, shape.dropout, shape.batchnorm)
            model.load_state_dict(state.model)
            models.append(model.to(self.device))
        self.net = PackedNetwork(shape.arch, shape.dropout, shape.batchnorm, models)
        self.slices, self.shapes, offset = {}, {}, 0
        for name in self.net.param_names:
            size = self.net.params[name].numel()
            self.slices[name] = slice(offset, offset + size)
            self.shapes[name] = self.net.params[name].shape
            offset += size
        self.optimizer = PackedOptimizer(
            shape.optimizer,
            self.net.flat,
            self.net.flat_grad,
            self.net.member_offsets(),
            [s.lr for s in specs],
            [s.momentum for s in specs],
            [s.weight_decay for s in specs],
        )
        for i, state in enumerate(states):
            self.optimizer.load_member_state(i, state.optimizer_by_name, self.slices, self.shapes)
        self.generators = [torch.Generator().set_state(s.generator) for s in states]
        self.dropout_generators = [torch.Generator().set_state(s.torch_rng) for s in states]
        self.active = [True] * len(specs)
        self.net.dropout_masks = self._dropout_masks
        self.graphed = None
        if self.device.type == "cuda" and len(data.train_y) >= shape.batch_size:
            from lenet_sweep.packed.cuda_graph import GraphedPackStep

            self.graphed = GraphedPackStep(self)

    def _dropout_masks(self, shape: torch.Size) -> torch.Tensor:
        """Scaled keep-masks [M, *shape]: on the CPU each member's from its own stream, as ``F.dropout`` draws
        them in the solo run; on a GPU one draw for the pack from the CUDA generator (graph-safe)."""
        keep = 1 - self.shape.dropout
        if self.device.type == "cuda":
            return torch.empty((len(self.specs), *shape), device=self.device).bernoulli_(keep).div_(keep)
        masks = [torch.empty(shape).bernoulli_(keep, generator=g).div_(keep) for g in self.dropout_generators]
        return torch.stack(masks)

    def step_inputs(self, idx: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``idx`` [M, b] of every member: inputs [b, M, 28, 28] (flipped where ``flips`` [M, n]
        says) and targets [M, b]."""
        members, batch = idx.shape
        by_sample = idx.t().flatten()  # sample-major, so member m's images land in channel m
        inputs = self.data.train_x.index_select(0, by_sample)
        flip = flips.gather(1, idx).t().flatten()
        inputs = torch.where(flip.view(-1, 1, 1, 1), inputs.flip(-1), inputs)
        targets = self.data.train_y.index_select(0, idx.flatten()).view(members, batch)
        return inputs.view(batch, members, *inputs.shape[2:]), targets

    def step(self, idx: torch.Tensor, flips: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        """One optimizer step for every member on its batch ``idx`` [M, b]; adds to the epoch's sums."""
        inputs, targets = self.step_inputs(idx, flips)
        logits = self.net(inputs)
        members, batch = targets.shape
        losses = F.cross_entropy(logits.reshape(members * batch, -1), targets.flatten(), reduction="none")
        member_loss = losses.view(members, batch).mean(1)
        self.optimizer.zero_grad()
        member_loss.sum().backward()  # members share no parameter: each gets its own loss's gradient
        self.optimizer.step()
        loss_sum.add_(member_loss.detach(), alpha=batch)
        correct.add_((logits.argmax(2) == targets).sum(1))

    def draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's order and flips for the next epoch ([M, n] each), drawn as ``train_one_epoch`` draws them."""
        n = len(self.data.train_y)
        orders, flips = [], []
        for spec, generator in zip(self.specs, self.generators):
            orders.append(torch.randperm(n, generator=generator))
            flip = (
                torch.rand(n, generator=generator) < spec.hflip_p
                if spec.hflip_p > 0
                else torch.zeros(n, dtype=torch.bool)
            )
            flips.append(flip)
        return torch.stack(orders).to(self.device), torch.stack(flips).to(self.device)

    def train_epoch(self) -> tuple[list[float], list[float]]:
        """One epoch for every member: (mean loss per sample, accuracy %) per member."""
        self.net.train()
        n, batch_size = len(self.data.train_y), self.shape.batch_size
        orders, flips = self.draw_epoch()
        loss_sum = torch.zeros(len(self.specs), device=self.device)
        correct = torch.zeros(len(self.specs), dtype=torch.long, device=self.device)
        first_eager = 0
        if self.graphed is not None:
            first_eager = self.graphed.train_full_batches(orders, flips)
            loss_sum += self.graphed.loss_sum
            correct += self.graphed.correct
        for start in range(first_eager, n, batch_size):
            self.step(orders[:, start : start + batch_size], flips, loss_sum, correct)
        return (loss_sum / n).tolist(), (100.0 * correct / n).tolist()

    @torch.inference_mode()
    def evaluate(self) -> tuple[list[float], list[float]]:
        """Every member on the test set, without augmentation: (mean loss per sample, accuracy %) per member."""
        self.net.eval()
        x, y, members = self.data.test_x, self.data.test_y, len(self.specs)
        loss_sum = torch.zeros(members, device=self.device)
        correct = torch.zeros(members, dtype=torch.long, device=self.device)
        for start in range(0, len(y), self.shape.eval_batch_size):
            inputs, targets = (
                x[start : start + self.shape.eval_batch_size],
                y[start : start + self.shape.eval_batch_size],
            )
            logits = self.net(inputs, shared_input=True)
            targets = targets.expand(members, -1)
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.flatten(), reduction="none")
            loss_sum += losses.view(members, -1).sum(1)
            correct += (logits.argmax(2) == targets).sum(1)
        return (loss_sum / len(y)).tolist(), (100.0 * correct / len(y)).tolist()

    def drop(self, member: int) -> None:
        """Freeze ``member`` in its slot (zero weights, no updates): it neither trains nor spreads non-finite values."""
        self.active[member] = False
        self.optimizer.freeze(member)
        with torch.no_grad():
            for param in self.net.params.values():
                param[member].zero_()

    def member_state(self, member: int) -> MemberState:
        """``member``'s state in its solo run's form, for its checkpoint and final weights."""
        return MemberState(
            self.net.member_state_dict(member),
            self.optimizer.member_state(member, self.slices, self.shapes),
            self.generators[member].get_state(),
            self.dropout_generators[member].get_state(),
        )

    def fit(
        self,
        epochs: int,
        start_epoch: int,
        on_epoch_end: Callable[[int, EpochMetrics], None],
        on_diverged: Callable[[int, DivergedError], None],
    ) -> None:
        """Epochs ``start_epoch..epochs`` for every active member, as ``train.fit`` runs them for one.

        ``on_epoch_end(member, metrics)`` per member and epoch; ``on_diverged(member, error)`` once for a
        member whose training loss became non-finite, which is then dropped. Stops early when no member is left.
        """
        for epoch in range(start_epoch, epochs + 1):
            if not any(self.active):
                return
            started = time.perf_counter()
            train_loss, train_acc = self.train_epoch()
            for member in self._active_members():
                if not math.isfinite(train_loss[member]):
                    self.drop(member)
                    on_diverged(member, DivergedError(f"training loss became {train_loss[member]} in epoch {epoch}"))
            test_loss, test_acc = self.evaluate()
            seconds = time.perf_counter() - started
            for member in self._active_members():
                metrics = EpochMetrics(
                    epoch, train_loss[member], train_acc[member], test_loss[member], test_acc[member], seconds
                )
                on_epoch_end(member, metrics)

    def _active_members(self) -> list[int]:
        return [i for i, active in enumerate(self.active) if active]
