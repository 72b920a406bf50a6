"""Where member jobs meet their pack: each job's ``fit`` call waits while the pack trains all of them.

The packed launcher runs every member job through the ordinary job lifecycle
(``job.run_job``: decide, open its run, prepare, train, artifacts, end), each in
its own greenlet on the main thread. Inside ``pack_fits``, a member's call of
``job.training_loop`` hands its model, optimizer, generator and callbacks to the
launcher and waits; ``train_pack`` trains the waiting members as one
``PackedTraining`` and, after each epoch, puts each member's state back into
that member's own model, optimizer, generator and global random state before
calling its ``on_epoch_end`` (so its checkpoint and metrics are the solo run's),
then resumes each job with its history, or with the error that ends it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import greenlet
import torch
from torch import nn

from lenet_sweep import job
from lenet_sweep.checkpoint import optimizer_state_by_name, optimizer_state_for
from lenet_sweep.fast.lenet import FastLeNet
from lenet_sweep.models import LeNet5
from lenet_sweep.packed.trainer import MemberSpec, MemberState, PackedTraining, PackShape
from lenet_sweep.train import DeviceData, EpochMetrics


@dataclass
class FitRequest:
    """One member job's ``train.fit`` call, waiting for its pack."""

    model: nn.Module  # the solo model (its state is the member's from here on)
    optimizer: torch.optim.Optimizer
    data: DeviceData
    epochs: int
    batch_size: int
    eval_batch_size: int
    generator: torch.Generator
    hflip_p: float
    start_epoch: int
    on_epoch_end: Callable[[EpochMetrics], None] | None
    torch_rng: torch.Tensor = field(default_factory=torch.get_rng_state)  # its dropout stream, as it arrived

    def shape(self) -> PackShape:
        model = self.model
        dropout = model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0
        return PackShape(
            "lenet" if isinstance(model, LeNet5) else "mlp",
            dropout,
            not isinstance(model.fc1_bn, nn.Identity),
            "sgd" if isinstance(self.optimizer, torch.optim.SGD) else "adam",
            self.batch_size,
            self.eval_batch_size,
        )

    def spec(self) -> MemberSpec:
        group = self.optimizer.param_groups[0]
        return MemberSpec(0, group["lr"], group.get("momentum", 0.0), group["weight_decay"], self.hflip_p)

    def state(self) -> MemberState:
        by_name = optimizer_state_by_name(self.optimizer.state_dict(), self.model)
        return MemberState(self.model.state_dict(), by_name, self.generator.get_state(), self.torch_rng)

    def take(self, state: MemberState) -> None:
        """Make the job's own objects hold ``state``: what its checkpoint and final weights save."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(optimizer_state_for(self.optimizer, self.model, state.optimizer_by_name))
        self.generator.set_state(state.generator)
        torch.set_rng_state(state.torch_rng)  # save_checkpoint records the global stream as the run's


def waiting_fit(
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
    progress_factory=None,
) -> list[EpochMetrics]:
    """``train.fit`` for a member job: hand the call to the launcher's greenlet and wait for the pack."""
    solo_model = model.model if isinstance(model, FastLeNet) else model
    request = FitRequest(
        solo_model, optimizer, data, epochs, batch_size, eval_batch_size, generator, hflip_p, start_epoch, on_epoch_end
    )
    outcome = greenlet.getcurrent().parent.switch(request)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@contextmanager
def pack_fits() -> Iterator[None]:
    """Inside, ``job.training_loop`` is ``waiting_fit``: member jobs wait for their pack instead of training."""
    solo_fit = job.training_loop
    job.training_loop = waiting_fit
    try:
        yield
    finally:
        job.training_loop = solo_fit


def train_pack(requests: list[FitRequest]) -> list[list[EpochMetrics] | BaseException]:
    """Train the waiting members (one pack per start epoch); per member its history, or the error that ended it."""
    outcomes: list[list[EpochMetrics] | BaseException] = [[] for _ in requests]
    by_start: dict[int, list[int]] = {}
    for i, request in enumerate(requests):
        by_start.setdefault(request.start_epoch, []).append(i)
    for start_epoch, members in by_start.items():
        _train_one_pack([requests[i] for i in members], start_epoch, outcomes, members)
    return outcomes


def _train_one_pack(requests: list[FitRequest], start_epoch: int, outcomes: list, positions: list[int]) -> None:
    """Train ``requests`` as one pack from ``start_epoch``; member i's outcome goes to ``outcomes[positions[i]]``."""
    first = requests[0]
    pack = PackedTraining(first.shape(), [r.spec() for r in requests], [r.state() for r in requests], first.data)

    def on_epoch_end(member: int, metrics: EpochMetrics) -> None:
        request = requests[member]
        try:
            request.take(pack.member_state(member))
            if request.on_epoch_end is not None:
                request.on_epoch_end(metrics)
        except Exception as error:  # e.g. the store refused its metrics: that job fails, the pack goes on
            pack.drop(member)
            outcomes[positions[member]] = error
            return
        outcomes[positions[member]].append(metrics)

    def on_diverged(member: int, error: Exception) -> None:
        outcomes[positions[member]] = error

    pack.fit(first.epochs, start_epoch, on_epoch_end, on_diverged)
