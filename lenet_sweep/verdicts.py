"""Verdicts on configurations compared over seeds, valid when the data are looked at after every round.

A comparison of configurations A and B ends in one of three verdicts:

- ``better``: the confidence interval of the difference of means excludes 0;
- ``equivalent``: the interval lies inside ``±margin`` (two one-sided tests);
- ``unresolved``: neither, with the seeds a further run would need.

The procedure (docs/statistics.md says why this one): looks are planned in advance at
``min_seeds, min_seeds + seeds_per_round, ..., max_seeds`` seeds per configuration. A pair
is judged at each planned look its two sides both reached, on the first ``n`` seeds of
each, by a Welch interval at level ``1 - spent`` where ``spent`` is the look's share of
``alpha / pairs`` (a linear alpha-spending function over the information fraction); its
verdict is the first look that resolves it. Every interval of every pair at every look
covers the true difference with probability at least ``1 - alpha`` together (a union
bound), so the chance of any wrong verdict, a wrong "better" included, stays at or below
``alpha`` whichever looks the sweep takes and whichever pairs it compares.

Pure numpy/scipy: the sweeper, the report and the simulation test use the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

BETTER, EQUIVALENT, UNRESOLVED = "better", "equivalent", "unresolved"
VERDICT_CODES = (UNRESOLVED, BETTER, EQUIVALENT)  # the vectorised functions return indices into this
POWER = 0.8  # the power a further run is sized for
BOOTSTRAP_RESAMPLES = 2000


class DesignError(ValueError):
    """A sequential design that cannot work; the message names the setting."""


@dataclass(frozen=True)
class Design:
    """The planned looks and the error budget of a sequential comparison.

    ``pairs``: how many pairs the budget is shared by (every pair that could be compared:
    ``n(n-1)/2`` for ``n`` configurations, whichever are compared in the end, because under
    ``compare=best`` the leader, and so the pairs, are chosen by the data).
    """

    min_seeds: int
    max_seeds: int
    seeds_per_round: int
    alpha: float
    margin: float
    pairs: int = 1

    def __post_init__(self) -> None:
        if self.min_seeds < 2:
            raise DesignError(f"min_seeds={self.min_seeds}: must be at least 2 (a spread needs two seeds)")
        if self.max_seeds < self.min_seeds:
            raise DesignError(f"max_seeds={self.max_seeds}: must be at least min_seeds={self.min_seeds}")
        if self.seeds_per_round < 1:
            raise DesignError(f"seeds_per_round={self.seeds_per_round}: must be a positive integer")
        if not 0 < self.alpha < 0.5:
            raise DesignError(f"alpha={self.alpha}: must be in (0, 0.5)")
        if not self.margin > 0:
            raise DesignError(f"margin={self.margin}: must be > 0 (in the metric's units)")
        if self.pairs < 1:
            raise DesignError(f"pairs={self.pairs}: must be at least 1")

    @classmethod
    def for_configs(cls, n_configs: int, **settings) -> Design:
        """The design for ``n_configs`` configurations: the budget shared by every pair of them."""
        return cls(pairs=max(1, n_configs * (n_configs - 1) // 2), **settings)

    def looks(self) -> list[int]:
        """Seeds per configuration at each planned look, the last at ``max_seeds``."""
        return list(range(self.min_seeds, self.max_seeds, self.seeds_per_round)) + [self.max_seeds]

    def level_at_look(self) -> list[float]:
        """The two-sided error level each look's interval spends, per pair; they sum to ``alpha / pairs``.

        Linear spending in the information fraction ``n / max_seeds``: a look at few seeds
        spends little, so the budget left for the last look stays close to a fixed design's.
        """
        fractions = [n / self.max_seeds for n in self.looks()]
        spent = [self.alpha / self.pairs * f for f in fractions]
        spent[-1] = self.alpha / self.pairs  # float rounding: the last look spends exactly the rest
        return [b - a for a, b in zip([0.0] + spent[:-1], spent)]

    def next_look(self, seeds: int) -> int | None:
        """The first planned look after ``seeds`` seeds; ``None`` once ``max_seeds`` is reached."""
        return next((n for n in self.looks() if n > seeds), None)


# --- the vectorised core: leading axes are independent comparisons --------------------------


def welch_interval(a: np.ndarray, b: np.ndarray, level: float | np.ndarray):
    """Difference of means ``a - b`` over the last axis and its two-sided ``1 - level`` Welch interval.

    Returns ``(difference, low, high)``. Where both sides have no spread the interval is the
    difference itself.
    """
    n_a, n_b = a.shape[-1], b.shape[-1]
    difference = a.mean(-1) - b.mean(-1)
    var_a, var_b = a.var(-1, ddof=1) / n_a, b.var(-1, ddof=1) / n_b
    se2 = var_a + var_b
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2**2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    df = np.where(se2 > 0, df, n_a + n_b - 2)
    half = stats.t.ppf(1 - np.asarray(level) / 2, df) * np.sqrt(se2)
    return difference, difference - half, difference + half


def classify(low, high, margin: float) -> np.ndarray:
    """Verdict codes (indices into ``VERDICT_CODES``) of intervals ``[low, high]``."""
    excludes_zero = (low > 0) | (high < 0)
    inside_margin = (low > -margin) & (high < margin)
    return np.where(excludes_zero, 1, np.where(inside_margin, 2, 0))


def sequential_verdicts(a: np.ndarray, b: np.ndarray, design: Design):
    """Each comparison's first resolving look over the looks both sides reached.

    ``a``, ``b``: ``(..., n_a)``, ``(..., n_b)`` values in seed order. Returns ``(codes,
    seeds, difference, low, high)``: the verdict code, the seeds per side at that look (at
    the last look reached when unresolved) and that look's interval.
    """
    reached = min(a.shape[-1], b.shape[-1])
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    codes = np.zeros(shape, dtype=int)
    seeds = np.zeros(shape, dtype=int)
    difference, low, high = (np.full(shape, np.nan) for _ in range(3))
    open_ = np.ones(shape, dtype=bool)
    for n, level in zip(design.looks(), design.level_at_look()):
        if n > reached:
            break
        d, lo, hi = welch_interval(a[..., :n], b[..., :n], level)
        verdict = classify(lo, hi, design.margin)
        codes = np.where(open_, verdict, codes)  # a resolved comparison keeps its first verdict
        seeds = np.where(open_, n, seeds)
        difference, low, high = (np.where(open_, new, old) for new, old in ((d, difference), (lo, low), (hi, high)))
        open_ = open_ & (verdict == 0)
    return codes, seeds, difference, low, high


# --- one comparison, for people ----------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The verdict on ``a`` against ``b`` (``a`` the one with the better mean), in the metric's units."""

    a: str
    b: str
    verdict: str
    seeds: int  # per side, at the look that decided (the last look reached when unresolved)
    seeds_a: int  # all seeds ``a`` has
    seeds_b: int
    difference: float  # mean of a minus mean of b at that look, signed so that positive favours a
    low: float
    high: float
    confidence: float  # the interval's level, 1 - the look's spent error
    margin: float
    p_improvement: float  # P(a run of a beats a run of b), over all seeds
    p_improvement_low: float
    p_improvement_high: float
    seeds_needed: int | None  # unresolved only: seeds per side for power 0.8 at the observed spread

    def sentence(self) -> str:
        """One line: the verdict, the interval, P(A > B) and the seeds."""
        if self.verdict == BETTER:
            head = f"{self.a} is better than {self.b}"
        elif self.verdict == EQUIVALENT:
            head = f"{self.a} and {self.b} are equivalent within ±{self.margin:g}"
        else:
            head = f"{self.a} vs {self.b}: unresolved within budget"
        text = (
            f"{head}: difference {self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
            f"({self.confidence:.2%} interval at {self.seeds} seeds each), "
            f"P({self.a} > {self.b}) = {self.p_improvement:.2f} [{self.p_improvement_low:.2f}, "
            f"{self.p_improvement_high:.2f}]; seeds {self.seeds_a} and {self.seeds_b}"
        )
        if self.verdict == UNRESOLVED:
            needed = "more than 10000" if self.seeds_needed is None else str(self.seeds_needed)
            text += f"; about {needed} seeds each would resolve it (power {POWER:g})"
        return text


def probability_of_improvement(a: Sequence[float], b: Sequence[float], level: float, seed: int = 0):
    """P(X_a > X_b) (ties count half) and its percentile bootstrap interval at ``1 - level``.

    Each side is resampled on its own (a stratified bootstrap, as rliable does); seeded, so a
    report reads the same every time.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)

    def estimate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        gaps = x[..., :, None] - y[..., None, :]
        return ((gaps > 0) + 0.5 * (gaps == 0)).mean(axis=(-2, -1))

    rng = np.random.default_rng(seed)
    boot_a = a[rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))]
    boot_b = b[rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))]
    low, high = np.quantile(estimate(boot_a, boot_b), [level / 2, 1 - level / 2])
    return float(estimate(a, b)), float(low), float(high)


def resolving_power(seeds: int, difference: float, spread: float, margin: float, level: float) -> float:
    """The chance a look at ``seeds`` per side resolves (either verdict), if the truth is ``difference``, ``spread``.

    Normal approximation around a Welch interval of half-width ``h``: the look stays unresolved
    only when the observed difference lands in ``margin - h <= |d| <= h``.
    """
    if spread == 0:
        return 1.0
    se = spread * math.sqrt(2 / seeds)
    half = stats.t.ppf(1 - level / 2, 2 * seeds - 2) * se
    if half < margin / 2:
        return 1.0
    lo, hi = margin - half, half

    def p_abs_between(x: float, y: float) -> float:  # P(x <= |D| <= y), D ~ N(difference, se)
        dist = stats.norm(difference, se)
        return (dist.cdf(y) - dist.cdf(x)) + (dist.cdf(-x) - dist.cdf(-y))

    return 1.0 - p_abs_between(lo, hi)


def seeds_needed(difference: float, spread: float, margin: float, level: float, limit: int = 10000) -> int | None:
    """The fewest seeds per side whose single look at ``level`` resolves with power 0.8; ``None`` above ``limit``."""
    n = 2
    while n <= limit:
        if resolving_power(n, difference, spread, margin, level) >= POWER:
            return n
        n = n + 1 if n < 500 else int(n * 1.05)
    return None


def compare(a_name: str, a: Sequence[float], b_name: str, b: Sequence[float], design: Design, maximize: bool = True):
    """The verdict on two configurations' per-seed values (in seed order); the better mean comes first.

    ``maximize=False`` for a metric where lower is better (a loss): the difference is then
    signed so that positive still favours the first.
    """
    sign = 1.0 if maximize else -1.0
    x, y = sign * np.asarray(a, dtype=float), sign * np.asarray(b, dtype=float)
    if y.mean() > x.mean():
        a_name, b_name, x, y = b_name, a_name, y, x
    codes, seeds, difference, low, high = sequential_verdicts(x, y, design)
    verdict = VERDICT_CODES[int(codes)]
    levels = dict(zip(design.looks(), design.level_at_look()))
    pooled_spread = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    final_level = design.alpha / design.pairs
    p, p_low, p_high = probability_of_improvement(x, y, final_level)
    needed = None
    if verdict == UNRESOLVED:
        needed = seeds_needed(float(x.mean() - y.mean()), pooled_spread, design.margin, final_level)
    return Comparison(
        a_name,
        b_name,
        verdict,
        int(seeds),
        len(x),
        len(y),
        float(difference),
        float(low),
        float(high),
        1 - levels[int(seeds)],
        design.margin,
        p,
        p_low,
        p_high,
        needed,
    )


def pairs_to_compare(values: Mapping[str, Sequence[float]], mode: str, maximize: bool = True) -> list[tuple[str, str]]:
    """``best``: the leader (best mean) against each other configuration; ``all``: every pair."""
    names = list(values)
    if mode == "all":
        return list(combinations(names, 2))
    sign = 1.0 if maximize else -1.0
    leader = max(names, key=lambda name: sign * float(np.mean(values[name])))
    return [(leader, name) for name in names if name != leader]


def judge(values: Mapping[str, Sequence[float]], design: Design, mode: str = "best", maximize: bool = True):
    """Every comparison ``mode`` asks for, among configurations with at least ``min_seeds`` values."""
    ready = {name: v for name, v in values.items() if len(v) >= design.min_seeds}
    return [compare(a, ready[a], b, ready[b], design, maximize) for a, b in pairs_to_compare(ready, mode, maximize)]
