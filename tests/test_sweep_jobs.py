"""What a sweep will launch: ``sweep.sweep_job_overrides`` (through ``hydra_internals``, where every use of
Hydra's private API is fenced) and the presets it expands, each job composed as Hydra composes it."""

from __future__ import annotations

import shutil

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from hydra.types import HydraContext
from omegaconf import OmegaConf

from lenet_sweep import __main__ as cli_module
from lenet_sweep import hydra_internals
from lenet_sweep.config import register_configs
from lenet_sweep.sweep import compose_every_job, sweep_job_overrides, take_composed_job
from tests.helpers.cli import REPO, SMALL, run_cli, runs_of

WRITEUP_STUDIES = [
    ("lenet", "lenet", "none", 0.0, False, "none", 0.0),
    ("mlp", "mlp", "none", 0.0, False, "none", 0.0),
    ("lenet_reg", "lenet", "dropout_bn", 0.2, True, "none", 0.0),
    ("lenet", "lenet", "none", 0.0, False, "flip", 0.5),
]


def sweep_config(*overrides: str, task=None):
    """The sweep's config as the multirun callback receives it; ``task`` replaces the command-line overrides."""
    config = compose("config", list(overrides), return_hydra_config=True)
    if task is not None:
        config.hydra.overrides.task = task
    return config


def test_sweep_job_overrides_lists_every_job_in_launch_order():
    """Fails with HydraInternalsChanged, naming the Hydra release, when Hydra's basic sweeper changes."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        grid = sweep_config(task=["model=lenet,mlp", "seed=0,1", "train.epochs=1"])
        jobs = sweep_job_overrides(grid)
        other_sweeper = sweep_config()
        other_sweeper.hydra.sweeper._target_ = "hydra_plugins.some_sweeper.SomeSweeper"
        assert sweep_job_overrides(other_sweeper) is None
    assert jobs == [[f"model={m}", f"seed={s}", "train.epochs=1"] for m in ("lenet", "mlp") for s in (0, 1)], (
        f"Hydra {hydra.__version__}"
    )


def test_writeup_preset_expands_to_the_four_experiments_times_three_seeds():
    """What the basic sweeper launches for ``-m experiment=writeup``, each job composed as Hydra would."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        jobs = sweep_job_overrides(sweep_config("experiment=writeup"))
        combos = []
        for overrides in jobs:
            cfg = OmegaConf.to_object(compose("config", overrides))
            reg = cfg.model.regularization
            combos.append(
                (
                    cfg.model.name,
                    cfg.model.arch,
                    reg.name,
                    reg.dropout,
                    reg.batchnorm,
                    cfg.aug.name,
                    cfg.aug.hflip_p,
                    cfg.seed,
                    cfg.train.epochs,
                    cfg.optimizer.name,
                )
            )
        # A regularization chosen on the command line still wins over the lenet_reg preset inside a study.
        overridden = compose("config", ["experiment=writeup", "+study=lenet_reg", "regularization=none"])
        assert (overridden.model.name, overridden.model.regularization.name) == ("lenet_reg", "none")
    assert combos == [(*s, seed, 15, "sgd") for s in WRITEUP_STUDIES for seed in (0, 1, 2)]


def test_a_launcher_takes_each_job_as_the_pre_launch_check_composed_it():
    """``take_composed_job`` gives what Hydra's ``load_sweep_config`` composes, once per job, for that sweep only."""
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        grid = sweep_config(task=["model=lenet,mlp", "optimizer.lr=0.01,0.1", "train.epochs=1"])
        planned = compose_every_job(grid)
        loader = GlobalHydra.instance().config_loader()
        for job in planned:
            taken = take_composed_job(grid, job.overrides)
            composed = loader.load_sweep_config(grid, list(job.overrides))
            assert OmegaConf.to_yaml(taken) == OmegaConf.to_yaml(composed)
            assert OmegaConf.get_cache(taken) == OmegaConf.get_cache(grid)
            assert take_composed_job(grid, job.overrides) is None  # taken already: the launcher composes it
        compose_every_job(grid)
        other_sweep = sweep_config(task=["model=lenet,mlp", "optimizer.lr=0.01,0.1", "train.epochs=1"])
        assert take_composed_job(other_sweep, planned[0].overrides) is None


def test_the_default_grid_sweeper_composes_only_the_jobs_the_pre_launch_check_did_not(tmp_path):
    """``hydra/sweeper=grid`` (the default) checks a batch without composing its jobs once more: with a config
    file gone after the pre-launch check, Hydra's basic sweeper fails on the job that needs it, ours does not,
    and a job the check never saw is still composed (and fails)."""
    register_configs()
    conf = shutil.copytree(REPO / "conf", tmp_path / "conf")
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        grid = sweep_config(task=["model=lenet,mlp", "train.epochs=1"])
        assert grid.hydra.sweeper._target_ == hydra_internals.GRID_SWEEPER
        jobs = [list(job.overrides) for job in compose_every_job(grid)]
        # Imported once Hydra has scanned its plugins (which runs the modules of Hydra's own sweepers again).
        from hydra_plugins.lenet_sweep_grid.grid_sweeper import GridSweeper

        (conf / "model" / "mlp.yaml").unlink()
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)  # not called
        ours, basic = GridSweeper(max_batch_size=None), hydra_internals.basic_sweeper_class()(max_batch_size=None)
        for sweeper in (ours, basic):
            sweeper.config, sweeper.hydra_context = grid, context
        ours.validate_batch_is_legal(jobs)
        with pytest.raises(MissingConfigException, match="mlp"):
            basic.validate_batch_is_legal(jobs)
        with pytest.raises(MissingConfigException, match="mlp"):
            ours.validate_batch_is_legal([["model=mlp", "train.epochs=2"]])


@pytest.mark.slow  # a CLI sweep
@pytest.mark.parametrize("preset", ["experiment=writeup", "+experiment=writeup"])
def test_both_spellings_of_the_preset_run_its_sweep(workdir, preset):
    """The preset's sweep over seeds 0, 1, 2, narrowed to one study on the command line."""
    result = run_cli(["-m", preset, "+study=mlp", *SMALL], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Sweep summary: 3 jobs: 3 finished" in result.stdout
    _, runs = runs_of(workdir)
    assert sorted((r.data.params["model.name"], r.data.params["seed"]) for r in runs) == [("mlp", s) for s in "012"]


def test_hydras_usage_errors_are_told_from_other_value_errors(monkeypatch):
    """Fails, naming the Hydra release, when Hydra checks its flags elsewhere than hydra/_internal/utils.py."""
    monkeypatch.setattr("sys.argv", ["lenet_sweep", "-m", "--cfg", "job"])
    with pytest.raises(ValueError) as usage:
        cli_module.main()
    assert hydra_internals.is_usage_error(usage.value), f"Hydra {hydra.__version__}"
    try:
        int("not a number")
    except ValueError as other:
        assert not hydra_internals.is_usage_error(other)
