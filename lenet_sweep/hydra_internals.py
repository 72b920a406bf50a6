"""Every use of Hydra's private API, in one place, each failing with a named error when Hydra changes it.

Three things have no public equivalent in hydra-core 1.3: the basic sweeper
itself (``hydra/sweeper=grid`` extends it), its ``split_arguments`` (the jobs a
sweep will launch, so every job is checked before the first starts) and telling
Hydra's own command-line usage errors (``-m --cfg job``), raised as a plain
``ValueError`` from ``hydra/_internal/utils.py``, from a ``ValueError`` raised by
anything else.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import hydra
from hydra.errors import HydraException

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
GRID_SWEEPER = "hydra_plugins.lenet_sweep_grid.grid_sweeper.GridSweeper"  # ours (the default), a BasicSweeper
USAGE_ERROR_MODULE = "hydra._internal.utils"  # where hydra-core 1.3 checks its command-line flags


class HydraInternalsChanged(HydraException):
    """A private part of Hydra this module uses is not what hydra-core 1.3 had; the message names the release."""


def _changed(what: str, error: Exception) -> HydraInternalsChanged:
    return HydraInternalsChanged(
        f"Hydra {hydra.__version__}: {what} is not what hydra-core 1.3 had ({type(error).__name__}: {error}); "
        "lenet_sweep.hydra_internals needs updating"
    )


def basic_sweeper_class() -> type:
    """Hydra's basic sweeper, which ``hydra/sweeper=grid`` extends."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    except ImportError as error:
        raise _changed(BASIC_SWEEPER, error) from error
    return BasicSweeper


def split_arguments(overrides) -> list[list[str]]:
    """Every job's overrides, in launch order, as Hydra's basic sweeper will launch them (parsed ``overrides``)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        (jobs,) = BasicSweeper.split_arguments(overrides, None)  # None: one batch holding every job
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        raise _changed("hydra._internal's BasicSweeper.split_arguments", error) from error
    return [list(job) for job in jobs]


def usage_error_file() -> Path:
    """The source file of the module whose ``ValueError`` is a Hydra usage error."""
    try:
        import hydra._internal.utils as module
    except ImportError as error:
        raise _changed(USAGE_ERROR_MODULE, error) from error
    return Path(module.__file__).resolve()


def is_usage_error(error: ValueError) -> bool:
    """Whether Hydra raised ``error`` checking its command-line flags (``-m --cfg job``)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve() == usage_error_file()
