"""``hydra/sweeper=optuna``: the sweeper's settings, and the check that runs before the sweep's parent run exists."""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lenet_sweep_optuna.optuna_sweeper.OptunaSweeper"
    # The study's total number of trials, counting those an earlier launch already ran.
    n_trials: int = 20
    # Trials running at once: each batch the launcher runs holds at most this many.
    n_jobs: int = 1
    # maximize or minimize; null: maximize an accuracy, minimize a loss.
    direction: str | None = None
    # The metric to optimise: val_acc or val_loss (needs data.val_size > 0).
    metric: str = "val_acc"
    # A trial's value: the metric's best epoch (best) or its last (final).
    objective: str = "best"
    sampler: str = "tpe"  # tpe, random or cmaes
    seed: int | None = None  # the sampler's seed
    pruner: str = "none"  # none, median or hyperband
    # Median pruner: trials that complete before any is pruned; both: epochs before pruning starts.
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    # null: derived from the fixed overrides and the search space.
    study_name: str | None = None
    # Any SQLAlchemy URL, or journal:<file> (Optuna's journal file); null: sqlite:///<start dir>/outputs/optuna.db.
    storage: str | None = None
    # The search space, key -> interval(...)/choice(...)/range(...), as on the command line (for presets).
    params: dict[str, str] | None = None
    # Tune, then compare (lenet_sweep/tuned.py): one study per point of this grid of comma lists
    # ({"+study": "lenet,mlp"}), each with the same budget; null: one study.
    studies: dict[str, str] | None = None
    # After every study has its n_trials: each study's best trial trained again with each of these seeds,
    # with compare_overrides applied (e.g. data.val_size=0, train.epochs=15); their runs are tagged tuned_from.
    compare_seeds: list[int] = field(default_factory=list)
    compare_overrides: list[str] = field(default_factory=list)


# `hydra/sweeper=optuna` sets two keys of the `hydra` node: the sweeper, and its check as a callback. Hydra
# composes this option before the primary config, so the check comes first among the callbacks and
# refuses bad input before the sweep's parent run is made (lenet_sweep.sweep.SweepCallback).
ConfigStore.instance().store(
    group="hydra/sweeper",
    name="optuna",
    node={
        "sweeper": OptunaSweeperConf,
        "callbacks": {"optuna_check": {"_target_": "hydra_plugins.lenet_sweep_optuna.checks.SearchCheck"}},
    },
    package="hydra",
    provider="lenet_sweep",
)
