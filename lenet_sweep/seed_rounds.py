"""Which configurations get seeds in the next round of an adaptive-seeds sweep, and what a sweep is expected to cost.

Pure: values in, seed counts out. The sweeper (``hydra/sweeper=seeds``) launches the rounds;
``lenet_sweep.verdicts`` judges them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lenet_sweep.verdicts import UNRESOLVED, Design, judge, pairs_to_compare, sequential_verdicts

PLAN_SIMULATIONS = 4000


def seeds_wanted(
    values: Mapping[str, Sequence[float]], design: Design, mode: str, maximize: bool
) -> tuple[dict[str, int], list]:
    """The seeds each configuration should have after the next round, and the comparisons as they stand.

    First ``min_seeds`` each; then, for each unresolved comparison, both sides up to its next
    planned look (a pair is judged on equally many seeds per side). A configuration that
    needs nothing keeps its count, so the sweep is done when no count grows.
    """
    counts = {name: len(v) for name, v in values.items()}
    if any(n < design.min_seeds for n in counts.values()):
        return {name: max(n, design.min_seeds) for name, n in counts.items()}, []
    comparisons = judge(values, design, mode, maximize)
    wanted = dict(counts)
    for c in comparisons:
        look = design.next_look(c.seeds) if c.verdict == UNRESOLVED else None
        if look is not None:
            wanted[c.a] = max(wanted[c.a], look)
            wanted[c.b] = max(wanted[c.b], look)
    return wanted, comparisons


@dataclass(frozen=True)
class PairPlan:
    """What the sequential procedure is expected to spend on one comparison, at a spread seen before."""

    a: str
    b: str
    difference: float
    spread: float
    expected_seeds: float  # per side, mean over simulated sweeps (max_seeds where unresolved)
    p_resolved: float  # chance of a verdict within max_seeds


def plan_pair(a: str, b: str, difference: float, spread: float, design: Design, seed: int = 0) -> PairPlan:
    """Simulate the pair's sequential comparison (normal seeds at ``difference``, ``spread``) under ``design``."""
    rng = np.random.default_rng(seed)
    x = difference + spread * rng.standard_normal((PLAN_SIMULATIONS, design.max_seeds))
    y = spread * rng.standard_normal((PLAN_SIMULATIONS, design.max_seeds))
    codes, seeds, *_ = sequential_verdicts(x, y, design)
    return PairPlan(a, b, difference, spread, float(seeds.mean()), float((codes != 0).mean()))


def plan_sweep(
    values: Mapping[str, Sequence[float]], design: Design, mode: str, maximize: bool
) -> tuple[list[PairPlan], dict[str, float]]:
    """Expected cost of the comparisons ``mode`` makes, from earlier values with a spread (two or more per side).

    Returns the per-pair plans and each configuration's expected seeds (the most any of its
    comparisons is expected to need, at least ``min_seeds``). Configurations with fewer
    than two values are left out: their spread is unknown.
    """
    known = {name: np.asarray(v, dtype=float) for name, v in values.items() if len(v) >= 2}
    sign = 1.0 if maximize else -1.0
    plans = []
    for a, b in pairs_to_compare(known, mode, maximize):
        x, y = sign * known[a], sign * known[b]
        spread = float(np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2))
        plans.append(plan_pair(a, b, float(x.mean() - y.mean()), spread, design))
    expected = {name: float(design.min_seeds) for name in known}
    for p in plans:
        for name in (p.a, p.b):
            expected[name] = max(expected[name], p.expected_seeds)
    return plans, expected
