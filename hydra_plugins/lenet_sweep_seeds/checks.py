"""Before the seeds sweep's parent run exists: its settings, grid and data checked, and ``sweep.plan=true`` answered.

A callback listed ahead of the project's ``SweepCallback`` (``config.SeedsSweeperChoice``), so
bad input stops the sweep with one line and exit code 2 before any run is made, and a plan
reads the store and exits without creating anything.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.lenet_sweep_seeds.grid import SeedsSettings, composed_config, configurations
from hydra_plugins.lenet_sweep_seeds.seeds_plan import print_seeds_plan
from lenet_sweep.config import ConfigError, one_line
from lenet_sweep.data import DataError
from lenet_sweep.job import load_job_dataset
from lenet_sweep.store import TrackingError, resolve_tracking_uri

SEEDS_SWEEPER = "hydra_plugins.lenet_sweep_seeds.seeds_sweeper.SeedsSweeper"


class SeedsCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") != SEEDS_SWEEPER:
            return
        try:
            settings = SeedsSettings.of(config.hydra.sweeper)
            loader = GlobalHydra.instance().config_loader()
            grid = configurations(config.hydra.sweeper.get("params"), list(config.hydra.overrides.task), loader)
            design = settings.design(len(grid))
            configs = [composed_config(loader, config, c.job(0)) for c in grid]
            for cfg in configs:  # each data set found and verified once, before anything runs
                load_job_dataset(cfg, Path.cwd())
            if config.sweep.plan:
                uri = resolve_tracking_uri(config.mlflow.tracking_uri, Path.cwd())
                sys.exit(print_seeds_plan(uri, config.mlflow.experiment, grid, configs, settings, design))
        except (ConfigError, DataError, TrackingError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except (HydraException, OmegaConfBaseException) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            sys.exit(2)
