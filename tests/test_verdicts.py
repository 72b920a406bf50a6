"""The sequential verdicts: hand-made cases, and simulated sweeps that hold the error rate (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.seeds_simulation import simulate_all_pairs_null, simulate_pair
from lenet_sweep.verdicts import (
    BETTER,
    EQUIVALENT,
    UNRESOLVED,
    Design,
    DesignError,
    compare,
    judge,
    pairs_to_compare,
    probability_of_improvement,
    resolving_power,
    seeds_needed,
    sequential_verdicts,
)

DESIGN = Design(min_seeds=3, max_seeds=10, seeds_per_round=2, alpha=0.05, margin=0.1)


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"min_seeds": 1}, "min_seeds=1"),
        ({"max_seeds": 2}, "max_seeds=2"),
        ({"seeds_per_round": 0}, "seeds_per_round=0"),
        ({"alpha": 0.5}, "alpha=0.5"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"margin": 0.0}, "margin=0.0"),
    ],
)
def test_a_design_that_cannot_work_names_its_setting(settings, names):
    base = {"min_seeds": 3, "max_seeds": 10, "seeds_per_round": 2, "alpha": 0.05, "margin": 0.1}
    with pytest.raises(DesignError, match=names):
        Design(**{**base, **settings})


def test_looks_end_at_max_seeds_and_spend_exactly_alpha_per_pair():
    design = Design.for_configs(4, min_seeds=3, max_seeds=10, seeds_per_round=2, alpha=0.05, margin=0.1)
    assert design.pairs == 6
    assert design.looks() == [3, 5, 7, 9, 10]
    levels = design.level_at_look()
    assert math.isclose(sum(levels), 0.05 / 6) and all(level > 0 for level in levels)
    assert levels[0] == pytest.approx(0.05 / 6 * 3 / 10)
    assert design.next_look(3) == 5 and design.next_look(9) == 10 and design.next_look(10) is None


def test_clearly_better_resolves_at_the_first_look():
    c = compare("lr=0.05", [91.2, 90.4, 91.9], "lr=1e-4", [11.3, 10.9, 12.0], DESIGN)
    assert (c.verdict, c.a, c.b, c.seeds) == (BETTER, "lr=0.05", "lr=1e-4", 3)
    assert c.low > 0 and c.difference == pytest.approx(np.mean([91.2, 90.4, 91.9]) - np.mean([11.3, 10.9, 12.0]))
    assert c.p_improvement == 1.0 and c.seeds_needed is None
    assert "lr=0.05 is better than lr=1e-4" in c.sentence()


def test_the_better_mean_comes_first_whichever_order_is_given():
    c = compare("worse", [97.0, 97.1, 97.05], "better", [99.1, 99.2, 99.15], DESIGN)
    assert (c.a, c.b, c.verdict) == ("better", "worse", BETTER) and c.difference > 0


def test_a_loss_is_better_when_lower():
    c = compare("low loss", [0.02, 0.021, 0.019], "high loss", [0.5, 0.52, 0.49], DESIGN, maximize=False)
    assert (c.a, c.verdict) == ("low loss", BETTER) and c.difference > 0


def test_clearly_equivalent_when_the_interval_lies_inside_the_margin():
    a = [98.000, 98.004, 97.998, 98.002, 98.001]
    b = [98.001, 97.999, 98.003, 98.000, 97.997]
    c = compare("A", a, "B", b, DESIGN)
    assert c.verdict == EQUIVALENT and -0.1 < c.low and c.high < 0.1 and c.seeds == 3
    assert "equivalent within ±0.1" in c.sentence()


def test_unresolvable_says_how_many_seeds_a_further_run_needs():
    a = [98.9, 99.3, 98.7, 99.2, 99.0, 98.8, 99.4, 98.9, 99.1, 99.0]
    b = [98.8, 99.2, 98.6, 99.1, 99.0, 98.7, 99.3, 98.9, 99.0, 98.9]
    c = compare("A", a, "B", b, DESIGN)
    assert c.verdict == UNRESOLVED and c.seeds == 10 and c.low < 0 < c.high
    assert c.seeds_needed is not None and c.seeds_needed > 10
    assert "unresolved within budget" in c.sentence() and f"about {c.seeds_needed} seeds each" in c.sentence()


def test_no_spread_decides_on_the_means_alone():
    assert compare("A", [99.0] * 3, "B", [98.0] * 3, DESIGN).verdict == BETTER
    assert compare("A", [99.0] * 3, "B", [99.0] * 3, DESIGN).verdict == EQUIVALENT


def test_a_verdict_is_the_first_resolving_look_and_uses_equal_seeds_per_side():
    a = np.array([91.0, 90.0, 92.0, 50.0, 50.0])  # resolved at 3 seeds; later seeds cannot undo it
    b = np.array([10.0, 11.0, 12.0])
    codes, seeds, difference, *_ = sequential_verdicts(a, b, DESIGN)
    assert (int(codes), int(seeds), float(difference)) == (1, 3, 91.0 - 11.0)


def test_probability_of_improvement_counts_ties_half_and_has_an_interval():
    assert probability_of_improvement([3, 4], [1, 2], 0.05) == (1.0, 1.0, 1.0)
    p, low, high = probability_of_improvement([1, 2, 3], [2, 2, 2], 0.05)
    assert p == pytest.approx(0.5) and 0 <= low <= p <= high <= 1 and low < high


def test_seeds_needed_gives_the_promised_power_in_a_simulation():
    difference, spread, margin, level = 0.5, 1.0, 0.25, 0.05
    n = seeds_needed(difference, spread, margin, level)
    assert n is not None and resolving_power(n, difference, spread, margin, level) >= 0.8
    assert resolving_power(n - 1, difference, spread, margin, level) < 0.8
    rng = np.random.default_rng(7)
    a = difference + spread * rng.standard_normal((4000, n))
    b = spread * rng.standard_normal((4000, n))
    codes, *_ = sequential_verdicts(a, b, Design(n, n, 1, level, margin))
    assert (codes != 0).mean() >= 0.75


def test_compare_best_pits_the_leader_against_each_other_and_all_compares_every_pair():
    values = {"a": [1, 2, 3], "b": [5, 6, 7], "c": [2, 3, 4]}
    assert pairs_to_compare(values, "best") == [("b", "a"), ("b", "c")]
    assert pairs_to_compare(values, "best", maximize=False) == [("a", "b"), ("a", "c")]
    assert len(pairs_to_compare(values, "all")) == 3
    judged = judge({**values, "d": [9.0]}, DESIGN)  # d has fewer than min_seeds values: not judged yet
    assert [(c.a, c.b) for c in judged] == [("b", "a"), ("b", "c")]


# --- simulated sweeps: the error rate under repeated looks --------------------------------------

SWEEPS = 20000
SIM_DESIGN = Design(min_seeds=3, max_seeds=25, seeds_per_round=2, alpha=0.05, margin=1.0)


def _within_simulation_error(rate: float, alpha: float, sweeps: int) -> bool:
    return rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sweeps)


@pytest.mark.parametrize("distribution", ["normal", "t3"])
def test_equal_means_give_a_wrong_better_at_most_alpha(distribution):
    outcome = simulate_pair(SIM_DESIGN, distribution, 0.0, SWEEPS, seed=11)
    assert _within_simulation_error(outcome.wrong_better, 0.05, SWEEPS)
    assert outcome.right_better == 0 and outcome.max_runs <= 2 * SIM_DESIGN.max_seeds


@pytest.mark.parametrize("distribution", ["normal", "t3"])
def test_four_equal_configurations_hold_alpha_over_every_pair_and_look(distribution):
    design = Design.for_configs(4, min_seeds=3, max_seeds=25, seeds_per_round=2, alpha=0.05, margin=1.0)
    assert _within_simulation_error(simulate_all_pairs_null(design, distribution, 4, 5000, seed=12), 0.05, 5000)


@pytest.mark.parametrize(
    ("distribution", "difference_sd", "resolved_at_least"),
    [
        ("normal", 2.0, 0.99),
        ("t3", 2.0, 0.99),
        ("normal", 1.0, 0.7),
        ("t3", 1.0, 0.7),
    ],
)
def test_true_differences_resolve_better_with_fewer_runs_than_the_budget(
    distribution, difference_sd, resolved_at_least
):
    outcome = simulate_pair(SIM_DESIGN, distribution, difference_sd, SWEEPS, seed=13)
    assert outcome.right_better >= resolved_at_least
    assert outcome.wrong_better <= 0.001
    assert outcome.mean_runs < 2 * SIM_DESIGN.max_seeds * (0.5 if difference_sd == 2.0 else 0.8)
