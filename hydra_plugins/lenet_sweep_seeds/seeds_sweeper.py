"""``hydra/sweeper=seeds``: runs a grid of configurations in rounds of seeds until every comparison is resolved.

Round one gives every configuration ``min_seeds`` seeds (0, 1, ...); after each round the
verdicts (``lenet_sweep.verdicts``) are taken again and only the configurations of unresolved
comparisons get more seeds, up to their next planned look, until nothing is open or
``max_seeds`` (or ``max_runs``) is spent. Each round is one batch for whatever launcher is
configured, with job numbers that go on across rounds. A job's value is read from the store
(the run its status file names, so a skipped job counts with the FINISHED run it reuses):
a relaunch trains nothing twice. The verdicts are printed at the end, and logged on the
sweep's parent run as ``verdicts.txt``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lenet_sweep_seeds.grid import Configuration, SeedsSettings, configurations
from hydra_plugins.lenet_sweep_seeds.values import final_value
from lenet_sweep.results import JobResult, ParentRun
from lenet_sweep.seed_rounds import seeds_wanted
from lenet_sweep.store import Store, resolve_tracking_uri
from lenet_sweep.verdicts import UNRESOLVED

log = logging.getLogger(__name__)
VERDICTS_ARTIFACT = "verdicts.txt"
USABLE = ("FINISHED", "SKIPPED")  # a skipped job's value is its earlier FINISHED run's


class SeedsSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None, **settings: Any) -> None:
        super().__init__()
        self.params = params
        self.settings = SeedsSettings.of(settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        grid = configurations(self.params, arguments, self.hydra_context.config_loader)
        design = self.settings.design(len(grid))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        store = Store(resolve_tracking_uri(self.config.mlflow.tracking_uri, Path.cwd()))
        values: dict[str, dict[int, float]] = {c.label: {} for c in grid}
        returns: list[list[JobReturn]] = []
        job_idx, comparisons, stop = 0, [], ""
        while True:
            wanted, comparisons = seeds_wanted(
                self._in_seed_order(values), design, self.settings.compare, self.settings.maximize
            )
            batch = [(c, seed) for c in grid for seed in range(len(values[c.label]), wanted[c.label])]
            if not batch:
                stop = self._why_done(comparisons)
                break
            if self.settings.max_runs is not None and sum(wanted.values()) > self.settings.max_runs:
                stop = f"max_runs={self.settings.max_runs} reached: the next round would make {sum(wanted.values())}"
                break
            overrides = [c.job(seed) for c, seed in batch]
            self.validate_batch_is_legal(overrides)
            log.info("round %d: %d jobs (%s)", len(returns) + 1, len(batch), _round_text(batch))
            results = self.launcher.launch(overrides, initial_job_idx=job_idx)
            job_idx += len(batch)
            returns.append(list(results))
            failed = self._record(store, batch, results, values)
            if failed:
                stop = f"stopped after round {len(returns)}: {failed}"
                break
        self._report(store, sweep_dir, comparisons, stop)
        return returns

    @staticmethod
    def _in_seed_order(values: dict[str, dict[int, float]]) -> dict[str, list[float]]:
        return {label: [by_seed[s] for s in sorted(by_seed)] for label, by_seed in values.items()}

    def _record(self, store: Store, batch, results, values: dict[str, dict[int, float]]) -> str:
        """Each job's value into ``values``; what went wrong (a job not FINISHED nor skipped), or ''."""
        problems = []
        for (configuration, seed), result in zip(batch, results):
            job = JobResult.read(Path(result.hydra_cfg.hydra.runtime.output_dir))
            if job is None or job.status not in USABLE or job.run_id is None:
                status = "no status (process died)" if job is None else f"{job.status}: {job.reason}"
                problems.append(f"{configuration.label} seed {seed} {status}")
                continue
            value = final_value(store, job.run_id, self.settings.metric)
            if value is None:
                problems.append(f"{configuration.label} seed {seed}: run {job.run_id} logged no {self.settings.metric}")
                continue
            values[configuration.label][seed] = value
        return "; ".join(problems)

    def _why_done(self, comparisons) -> str:
        if not comparisons:
            return "nothing to compare: one configuration"
        if any(c.verdict == UNRESOLVED for c in comparisons):
            return f"max_seeds={self.settings.max_seeds} reached with comparisons still open"
        return "every comparison resolved"

    def _report(self, store: Store, sweep_dir: Path, comparisons, stop: str) -> None:
        s = self.settings
        lines = [
            f"Verdicts ({s.metric}, final epoch, {s.direction}; alpha {s.alpha:g} over every look and pair, "
            f"margin ±{s.margin:g}, compare={s.compare}): {stop}"
        ]
        lines += [f"  {c.sentence()}" for c in comparisons]
        text = "\n".join(lines)
        print(text, flush=True)
        parent = ParentRun.read(sweep_dir)
        if parent is not None:
            try:
                store.log_text(parent.run_id, text + "\n", VERDICTS_ARTIFACT)
            except Exception as error:  # the verdicts are printed; a store hiccup must not fail the sweep
                print(f"verdicts not logged on the parent run: {error}", file=sys.stderr)


def _round_text(batch: list[tuple[Configuration, int]]) -> str:
    seeds: dict[str, list[int]] = {}
    for configuration, seed in batch:
        seeds.setdefault(configuration.label, []).append(seed)
    return "; ".join(f"{label}: seeds {', '.join(map(str, s))}" for label, s in seeds.items())
