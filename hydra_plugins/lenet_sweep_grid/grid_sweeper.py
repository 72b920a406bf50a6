"""``hydra/sweeper=grid``, the default sweeper: Hydra's basic sweeper without its second composition of every job.

Before launching a batch, Hydra's basic sweeper composes each of its jobs only to
find composition errors early, and then the launcher composes each job again. The
sweep's pre-launch check (``lenet_sweep.sweep.compose_every_job``) has already
composed every job of the grid and checked it as the job will, so this sweeper's
batch check composes only the jobs that check did not see (none, for a grid it
checked). All else is the basic sweeper's: ``hydra.sweeper.params``,
``hydra.sweeper.max_batch_size``, the jobs and their order; ``hydra/sweeper=basic``
still chooses Hydra's own.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from lenet_sweep.hydra_internals import GRID_SWEEPER, basic_sweeper_class


@dataclass
class GridSweeperConf:
    _target_: str = GRID_SWEEPER
    # As Hydra's basic sweeper: at most this many jobs per launch (null: one batch), and the grid's values.
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="lenet_sweep")


class GridSweeper(basic_sweeper_class()):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose the batch's jobs that the sweep's pre-launch check has not composed and checked."""
        from lenet_sweep.sweep import was_composed  # here: Hydra imports every plugin at start-up

        super().validate_batch_is_legal([job for job in batch if not was_composed(self.config, job)])
