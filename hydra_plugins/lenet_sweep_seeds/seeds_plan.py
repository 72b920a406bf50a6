"""``sweep.plan=true`` under ``hydra/sweeper=seeds``: the seeds each comparison is expected to need, from the store.

Reads the FINISHED runs a sweep would reuse (seeds 0, 1, ... of each configuration), takes
their spread, and simulates the sequential procedure at that spread and difference
(``seed_rounds.plan_sweep``). Configurations with fewer than two such seeds have no spread
yet: a pilot round of ``min_seeds`` comes first. Creates nothing, not even the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hydra_plugins.lenet_sweep_seeds.grid import Configuration, SeedsSettings, seed_fingerprints
from hydra_plugins.lenet_sweep_seeds.values import finished_values
from lenet_sweep.config import Config
from lenet_sweep.seed_rounds import plan_sweep
from lenet_sweep.store import Store, store_exists
from lenet_sweep.verdicts import Design


def earlier_values(
    tracking_uri: str,
    experiment: str,
    grid: Sequence[Configuration],
    configs: Sequence[Config],
    settings: SeedsSettings,
) -> dict[str, list[float]]:
    """Each configuration's reusable per-seed values (seed order), read-only; empty lists where the store has none."""
    empty: dict[str, list[float]] = {c.label: [] for c in grid}
    if not store_exists(tracking_uri):
        return empty
    store = Store(tracking_uri)
    experiment_id = store.experiment_id(experiment)
    if experiment_id is None:
        return empty
    seeds = range(settings.max_seeds)
    return {
        c.label: finished_values(store, experiment_id, seed_fingerprints(cfg, seeds), settings.metric)
        for c, cfg in zip(grid, configs)
    }


def print_seeds_plan(
    tracking_uri: str,
    experiment: str,
    grid: Sequence[Configuration],
    configs: Sequence[Config],
    settings: SeedsSettings,
    design: Design,
) -> int:
    """Print the plan; the exit code (0)."""
    values = earlier_values(tracking_uri, experiment, grid, configs, settings)
    print(
        f"Plan (hydra/sweeper=seeds): {len(grid)} configurations, {settings.min_seeds} to {settings.max_seeds} seeds "
        f"each ({settings.seeds_per_round} per round), {settings.metric} {settings.direction}, margin "
        f"±{settings.margin:g}, alpha {settings.alpha:g} over {design.pairs} pairs, compare={settings.compare}"
    )
    width = max(len(c.label) for c in grid)
    for c in grid:
        v = values[c.label]
        spread = f": {np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) >= 2 else ""
        print(f"  {c.label:<{width}}  {len(v)} FINISHED seeds in the store{spread}")
    plans, expected = plan_sweep(values, design, settings.compare, settings.maximize)
    for p in plans:
        print(
            f"  {p.a} vs {p.b}: difference {p.difference:+.3f}, spread {p.spread:.3f} -> about "
            f"{p.expected_seeds:.1f} seeds each, resolved within max_seeds in {p.p_resolved:.0%} of simulated sweeps"
        )
    unknown = [c.label for c in grid if c.label not in expected]
    runs = math.ceil(sum(expected.values()) + settings.min_seeds * len(unknown))
    reused = sum(min(len(v), math.ceil(expected.get(label, settings.min_seeds))) for label, v in values.items())
    if unknown:
        print(
            f"No spread in the store for {', '.join(unknown)}: a pilot round of {settings.min_seeds} seeds each comes "
            "first; plan again after it for the comparisons that involve them."
        )
    print(f"Expected runs: about {runs} (at most {settings.max_seeds * len(grid)}), {reused} of them already FINISHED")
    return 0
