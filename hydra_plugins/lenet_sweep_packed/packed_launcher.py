"""``hydra/launcher=packed``: a sweep's jobs trained in packs, each pack one batched model, each job its own run.

The launcher composes every job's config as Hydra's basic launcher does (or takes
the one the sweep's pre-launch check composed, ``sweep.take_composed_job``), groups
the jobs that can train together (``pack_key``: same network shapes, optimizer
rule, batches, epochs, data and device) into packs of at most ``max_pack``, and
runs each pack's jobs through the ordinary job lifecycle, each in its own
greenlet: a job decides (skip, resume, new), opens its run and prepares it, then
waits in ``train.fit`` while ``lenet_sweep.packed`` trains the pack; after each
epoch it checkpoints and logs as a solo job does, and at the end it logs its
artifacts, ends its run and writes its status file. A job that packs with no
other runs alone, exactly as the basic launcher runs it.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.lenet_sweep_packed.packed_launcher.PackedLauncher"
    # The most jobs trained as one model; more same-shape jobs make several packs, one after another.
    max_pack: int = 64


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="lenet_sweep")


def pack_key(composed: DictConfig) -> tuple | None:
    """What jobs must share to train as one pack; None for a job that trains alone (compiled, bf16, a validation
    split, or a config that does not convert: its own run reports why)."""
    from lenet_sweep.config import job_config

    try:
        cfg = job_config(composed)
    except Exception:
        return None
    if cfg.train.compile or cfg.train.amp != "off" or getattr(cfg.data, "val_size", 0):
        return None
    reg = cfg.model.regularization
    train = (cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size)
    data = repr(sorted(asdict(cfg.data).items()))
    return (cfg.model.arch, reg.dropout, reg.batchnorm, cfg.optimizer.name, train, data, cfg.device)


def group_into_packs(keys: Sequence[tuple | None], max_pack: int) -> list[list[int]]:
    """Job positions grouped by key, in order of first appearance, cut into packs of at most ``max_pack``."""
    groups: dict[object, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(("alone", position) if key is None else key, []).append(position)
    packs = []
    for members in groups.values():
        packs += [members[i : i + max_pack] for i in range(0, len(members), max_pack)]
    return packs


class PackedLauncher(Launcher):
    def __init__(self, max_pack: int = 64) -> None:
        super().__init__()
        if not isinstance(max_pack, int) or max_pack < 1:
            print(f"error: hydra.launcher.max_pack={max_pack!r}: must be a positive integer", file=sys.stderr)
            sys.exit(2)
        self.max_pack = max_pack
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        from lenet_sweep.sweep import take_composed_job  # here: Hydra imports every plugin at start-up

        configs = []
        for offset, overrides in enumerate(job_overrides):
            sweep_config = take_composed_job(self.config, overrides)
            if sweep_config is None:  # another sweeper's batch: compose it here
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = initial_job_idx + offset
            configs.append(sweep_config)
        packs = group_into_packs([pack_key(c) for c in configs], self.max_pack)
        log.info(f"Launching {len(configs)} jobs in {len(packs)} packs (at most {self.max_pack} jobs each)")
        results: list[JobReturn | None] = [None] * len(configs)
        for number, pack in enumerate(packs):
            for position in pack:
                lst = " ".join(filter_overrides(job_overrides[position]))
                log.info(f"\tpack {number} #{initial_job_idx + position} : {lst}")
            for position, result in zip(pack, self._run_pack([configs[p] for p in pack])):
                results[position] = result
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return results

    def _run_job(self, sweep_config: DictConfig) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _run_pack(self, configs: list[DictConfig]) -> list[JobReturn]:
        """Each job through its lifecycle; the ones that reach training train together."""
        if len(configs) == 1:
            return [self._run_job(configs[0])]
        import greenlet  # here, not at the top: Hydra imports every plugin at start-up, packed or not

        from lenet_sweep.packed.rendezvous import FitRequest, pack_fits, train_pack

        results: list[JobReturn | None] = [None] * len(configs)
        waiting: list[tuple[int, greenlet.greenlet, FitRequest]] = []
        with pack_fits():
            try:
                for position, sweep_config in enumerate(configs):
                    job = greenlet.greenlet(self._run_job)
                    arrived = job.switch(sweep_config)  # the job's JobReturn, or its fit call once it waits to train
                    if job.dead:
                        results[position] = arrived
                    else:
                        waiting.append((position, job, arrived))
                outcomes = train_pack([request for _, _, request in waiting])
            except BaseException as interrupt:  # Ctrl-C, SIGTERM: every waiting job ends its run KILLED
                for _, job, _ in reversed(waiting):
                    try:
                        job.throw(type(interrupt)(*interrupt.args))
                    except BaseException:
                        pass
                raise
            # Last in, first out, so each job's signal handlers are restored in the order they were set.
            for (position, job, _), outcome in reversed(list(zip(waiting, outcomes))):
                results[position] = job.switch(outcome)
        return results
