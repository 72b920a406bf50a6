"""The search space of an Optuna study, in the grammar of Hydra's Optuna sweeper.

A sweep's overrides (command line and ``hydra.sweeper.params``) split into the
fixed ones (``model=lenet``: every trial gets them) and the searched ones, each
an Optuna distribution:

- ``interval(a,b)``: a float in [a, b]; ``tag(log,interval(a,b))`` on a log scale,
  ``tag(int,interval(a,b))`` an integer;
- ``choice(x,y,...)`` or ``x,y,...``: one of the values;
- ``range(start,stop[,step])``: one of the values ``range`` enumerates (``stop`` excluded,
  as in Hydra's basic sweeper), as an int (or float) distribution with that step.

Overrides are parsed with Hydra's public ``OverridesParser``. Bad bounds raise
``ConfigError`` naming the override.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from lenet_sweep.config import ConfigError

PLAIN_VALUE = re.compile(r"^[\w./:+-]+$")
KNOWN_TAGS = {"log", "int"}


@dataclass(frozen=True)
class SearchSpace:
    """``fixed``: overrides every trial gets, as written; ``params``: override key -> distribution."""

    fixed: tuple[str, ...]
    params: Mapping[str, BaseDistribution]

    def describe(self) -> list[str]:
        """One line per searched key, e.g. ``optimizer.lr: float in [0.001, 0.3], log scale``."""
        return [f"{key}: {describe_distribution(d)}" for key, d in self.params.items()]


def parse_search_space(overrides: Iterable[str]) -> SearchSpace:
    """Split ``overrides`` (``hydra.sweeper.params`` as ``key=value`` first, then the command line's) into a space.

    A key given twice takes its last value, as Hydra does.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    fixed: dict[str, str] = {}
    params: dict[str, BaseDistribution] = {}
    for override in parsed:
        key = override.get_key_element()
        fixed.pop(key, None)
        params.pop(key, None)
        if override.is_sweep_override():
            params[key] = distribution_of(override)
        else:
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
    return SearchSpace(tuple(fixed.values()), params)


def distribution_of(override: Override) -> BaseDistribution:
    """The Optuna distribution a sweep override (interval, choice, range) describes."""
    value = override.value()
    text = override.input_line or override.get_key_element()
    tags = set(getattr(value, "tags", set()) or set())
    if tags - KNOWN_TAGS:
        raise ConfigError(f"{text}: unknown tag {', '.join(sorted(tags - KNOWN_TAGS))} (known: log, int)")
    if isinstance(value, IntervalSweep):
        return _interval(text, float(value.start), float(value.end), "log" in tags, "int" in tags)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{text}: the range is empty")
        if len(values) == 1:
            return CategoricalDistribution(values)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        step = float(value.step)
        return FloatDistribution(float(values[0]), float(values[0]) + step * (len(values) - 1), step=step)
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if any(not isinstance(c, str | int | float | bool) for c in choices):
            raise ConfigError(f"{text}: choices must be strings, numbers or booleans")
        return CategoricalDistribution(choices)
    raise ConfigError(f"{text}: not a search space (use interval, choice or range)")


def _interval(text: str, low: float, high: float, log: bool, integer: bool) -> BaseDistribution:
    if not low < high:
        raise ConfigError(f"{text}: the lower bound must be below the upper bound")
    if log and low <= 0:
        raise ConfigError(f"{text}: a log interval needs bounds > 0")
    if integer:
        if low != int(low) or high != int(high):
            raise ConfigError(f"{text}: an int interval needs integer bounds")
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(low, high, log=log)


def describe_distribution(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(format_value(c) for c in distribution.choices)
    kind = "int" if isinstance(distribution, IntDistribution) else "float"
    text = f"{kind} in [{distribution.low}, {distribution.high}]"
    if distribution.step is not None and distribution.step != 1:
        text += f", step {distribution.step}"
    return text + (", log scale" if distribution.log else "")


def format_value(value: Any) -> str:
    """``value`` as the override grammar reads it back: ``true``, ``0.01``, ``dropout``, ``'a b'``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if PLAIN_VALUE.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(space: SearchSpace, params: Mapping[str, Any]) -> list[str]:
    """The overrides of one trial: the fixed ones, then each searched key at its value in ``params``."""
    return [*space.fixed, *(f"{key}={format_value(params[key])}" for key in space.params)]


def corner_params(space: SearchSpace) -> list[dict[str, Any]]:
    """Points of the space whose composition checks it: every key at its low end, at its high end,
    and each choice of each categorical key once (so a bad config group choice is found before any trial)."""
    low = {key: _end(d, low=True) for key, d in space.params.items()}
    points = [low, {key: _end(d, low=False) for key, d in space.params.items()}]
    for key, distribution in space.params.items():
        if isinstance(distribution, CategoricalDistribution):
            points += [{**low, key: choice} for choice in distribution.choices[1:-1]]
    return points


def _end(distribution: BaseDistribution, low: bool) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0 if low else -1]
    return distribution.low if low else distribution.high
