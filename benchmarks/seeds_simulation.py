"""Simulated adaptive-seeds sweeps, no training: error rates and seeds used by ``lenet_sweep.verdicts``.

``python -m benchmarks.seeds_simulation`` prints the table in docs/statistics.md. Each
simulated sweep draws every seed's final accuracy up front (in units of the seed-to-seed
standard deviation) and runs the sequential procedure on it, vectorised over sweeps; the
fast test in tests/test_verdicts.py runs the same function.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from lenet_sweep.verdicts import Design, sequential_verdicts

DISTRIBUTIONS = ("normal", "t3")


def draw(rng: np.random.Generator, distribution: str, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance noise: normal, or Student's t with 3 degrees of freedom (heavy tails) scaled to unit variance."""
    if distribution == "normal":
        return rng.standard_normal(shape)
    if distribution == "t3":
        return rng.standard_t(3, shape) / np.sqrt(3.0)
    raise ValueError(f"unknown distribution {distribution!r}; choose from {', '.join(DISTRIBUTIONS)}")


@dataclass(frozen=True)
class Outcome:
    """What ``sweeps`` simulated sweeps ended with; rates are fractions of sweeps, seeds per configuration."""

    sweeps: int
    wrong_better: float  # any "better" verdict that is wrong (both means equal, or the wrong way round)
    right_better: float
    equivalent: float
    unresolved: float
    mean_runs: float  # runs summed over the configurations
    max_runs: int


def simulate_pair(design: Design, distribution: str, difference_sd: float, sweeps: int, seed: int) -> Outcome:
    """Two configurations, the first ``difference_sd`` standard deviations better; the sweep as the sweeper runs it.

    With two configurations either ``compare`` mode makes the one pair, and both sides get
    seeds until it resolves: the runs used are twice the seeds at the deciding look.
    """
    rng = np.random.default_rng(seed)
    a = difference_sd + draw(rng, distribution, (sweeps, design.max_seeds))
    b = draw(rng, distribution, (sweeps, design.max_seeds))
    codes, seeds, difference, _, _ = sequential_verdicts(a, b, design)
    better = codes == 1
    right = better & (difference > 0) if difference_sd > 0 else np.zeros_like(better)
    return Outcome(
        sweeps,
        float((better & ~right).mean()),
        float(right.mean()),
        float((codes == 2).mean()),
        float((codes == 0).mean()),
        float(2 * seeds.mean()),
        int(2 * seeds.max()),
    )


def simulate_all_pairs_null(design: Design, distribution: str, configs: int, sweeps: int, seed: int) -> float:
    """``configs`` configurations with equal means: the fraction of sweeps with any "better" among every pair.

    This is ``compare=all``'s family-wise rate exactly (each pair runs until its first resolving
    look) and bounds ``compare=best``'s, whose reported pairs are a data-chosen subset.
    """
    rng = np.random.default_rng(seed)
    values = draw(rng, distribution, (configs, sweeps, design.max_seeds))
    any_better = np.zeros(sweeps, dtype=bool)
    for i, j in combinations(range(configs), 2):
        codes, *_ = sequential_verdicts(values[i], values[j], design)
        any_better |= codes == 1
    return float(any_better.mean())


def table(design: Design, sweeps: int, seed: int = 0) -> str:
    """The markdown table of docs/statistics.md."""
    lines = [
        "| noise | true difference | wrong better | right better | equivalent | unresolved | runs used (mean / max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for distribution in DISTRIBUTIONS:
        for difference_sd in (0.0, 1.0, 2.0):
            o = simulate_pair(design, distribution, difference_sd, sweeps, seed)
            lines.append(
                f"| {distribution} | {difference_sd:g} SD | {o.wrong_better:.4f} | {o.right_better:.3f} | "
                f"{o.equivalent:.3f} | {o.unresolved:.3f} | {o.mean_runs:.1f} / {o.max_runs} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=20000)
    parser.add_argument("--min-seeds", type=int, default=3)
    parser.add_argument("--max-seeds", type=int, default=25)
    parser.add_argument("--seeds-per-round", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--margin-sd", type=float, default=0.5, help="margin in seed-to-seed standard deviations")
    args = parser.parse_args()
    design = Design(args.min_seeds, args.max_seeds, args.seeds_per_round, args.alpha, args.margin_sd)
    print(f"{design}, {args.sweeps} sweeps per row")
    print(table(design, args.sweeps))
    for distribution in DISTRIBUTIONS:
        design4 = Design.for_configs(
            4,
            min_seeds=args.min_seeds,
            max_seeds=args.max_seeds,
            seeds_per_round=args.seeds_per_round,
            alpha=args.alpha,
            margin=args.margin_sd,
        )
        rate = simulate_all_pairs_null(design4, distribution, 4, args.sweeps, 1)
        print(f"4 configurations, equal means, {distribution}: any wrong better over 6 pairs {rate:.4f}")


if __name__ == "__main__":
    main()
