"""Tune, then compare: one study per experiment with the same budget, then each study's best over fixed seeds.

``hydra.sweeper.studies`` names the experiments (``{"+study": "lenet,mlp"}``: a
grid, one Optuna study per combination, each with the same ``n_trials``,
sampler, seed and pruner); ``hydra.sweeper.compare_seeds`` trains each study's
best trial again with every seed, with ``hydra.sweeper.compare_overrides``
applied (the preset trains those on the whole training set for the full
epochs), and their runs are tagged ``tuned_from`` (``store.TUNED_FROM_TAG``) so the report compares them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from lenet_sweep.config import ConfigError
from lenet_sweep.search_space import format_value

TUNED_TRIAL_TAG = "tuned_trial"


def study_grid(studies: Mapping[str, str] | None) -> list[list[str]]:
    """The fixed overrides of each study: the product of ``studies``' comma lists ([[]]: one study, as before).

    ``{"+study": "lenet,mlp", "aug": "none,flip"}`` gives four override lists. Raises ``ConfigError`` on a
    value that is not a plain list (``interval(...)`` belongs in the search space).
    """
    if not studies:
        return [[]]
    parser = OverridesParser.create()
    axes = []
    for key, value in studies.items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise ConfigError(f"hydra.sweeper.studies.{key}={value}: must be a comma list of values")
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        axes.append([f"{key}={v}" for v in values])
    return [list(point) for point in itertools.product(*axes)]


def compare_job_overrides(
    fixed: Sequence[str], params: Mapping[str, Any], compare_overrides: Sequence[str], seed: int
) -> list[str]:
    """The overrides of the compare job that trains a best trial's ``params`` with ``seed``.

    ``compare_overrides`` replace the study's fixed overrides of the same key (``data.val_size=0``).
    """
    replaced = {o.partition("=")[0] for o in compare_overrides} | {"seed"}
    kept = [o for o in fixed if o.partition("=")[0] not in replaced]
    best = [f"{key}={format_value(value)}" for key, value in params.items() if key not in replaced]
    return [*kept, *best, *compare_overrides, f"seed={seed}"]
