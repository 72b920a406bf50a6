"""AdaStop (Mathieu et al., TMLR 2024) on the cases of ``benchmarks.seeds_simulation``, for docs/statistics.md.

Runs the ``adastop`` package itself (PyPI ``adastop``, not a dependency of lenet-sweep:
``pip install adastop`` into any environment, or put its unpacked wheel on ``PYTHONPATH``)
with its stage schedule (5 runs per agent per stage, 5 stages, at most 25), ``alpha``
0.05, ``B`` 10000 permutations, no early accept (``beta`` 0), on exactly the values the
simulation draws for the same seed: row ``i``'s first ``5k`` values at stage ``k``.

    python -m benchmarks.adastop_compare --sweeps 1000
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.seeds_simulation import DISTRIBUTIONS, draw

STAGE_RUNS, STAGES = 5, 5


def adastop_pair(a: np.ndarray, b: np.ndarray, alpha: float, seed: int) -> tuple[str, int]:
    """AdaStop's decision on one simulated pair (``larger``/``smaller``/``equal``) and the runs it used."""
    from adastop import MultipleAgentsComparator

    comparator = MultipleAgentsComparator(n=STAGE_RUNS, K=STAGES, B=10000, alpha=alpha, seed=seed)
    for stage in range(STAGES):
        seen = STAGE_RUNS * (stage + 1)
        comparator.partial_compare({"A": a[:seen], "B": b[:seen]}, verbose=False)
        if comparator.is_finished:
            break
    (decision,) = comparator.decisions.values()
    return decision, sum(comparator.n_iters.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    print("| noise | true difference | wrong better | right better | runs used (mean / max) |")
    print("|---|---|---|---|---|")
    for distribution in DISTRIBUTIONS:
        for difference_sd in (0.0, 1.0, 2.0):
            rng = np.random.default_rng(0)  # the draws of seeds_simulation.simulate_pair with seed 0
            a = difference_sd + draw(rng, distribution, (args.sweeps, STAGE_RUNS * STAGES))
            b = draw(rng, distribution, (args.sweeps, STAGE_RUNS * STAGES))
            outcomes = [adastop_pair(a[i], b[i], args.alpha, seed=i) for i in range(args.sweeps)]
            right = sum(d == "larger" for d, _ in outcomes) if difference_sd > 0 else 0
            wrong = sum(d in ("larger", "smaller") for d, _ in outcomes) - right
            runs = [r for _, r in outcomes]
            print(
                f"| {distribution} | {difference_sd:g} SD | {wrong / args.sweeps:.4f} | {right / args.sweeps:.3f} | "
                f"{np.mean(runs):.1f} / {max(runs)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
