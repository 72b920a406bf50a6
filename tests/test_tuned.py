"""Tune, then compare (``experiment=writeup_tuned``, ``lenet_sweep/tuned.py``): one study per experiment with the
same budget, then each study's best trial over fixed seeds, compared by the report."""

from __future__ import annotations

import optuna
import pytest

from lenet_sweep.config import ConfigError
from lenet_sweep.tuned import compare_job_overrides, study_grid
from tests.helpers.cli import run_cli, runs_of

# Two studies (LeNet-5, the MLP) of two 1-epoch trials on 600 training / 200 validation / 200 test images,
# then each best trial with seeds 0 and 1 for 2 epochs on the whole (600-image) training subset.
TUNED = [
    "-m",
    "experiment=writeup_tuned",
    "hydra/launcher=basic",
    'hydra.sweeper.studies={+study:"lenet,mlp"}',
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.compare_seeds=[0,1]",
    "hydra.sweeper.compare_overrides=['data.val_size=0','train.epochs=2']",
    "train.epochs=1",
    "data.train_limit=600",
    "data.test_limit=200",
    "data.val_size=200",
]


def test_the_studies_grid_is_the_product_of_its_comma_lists():
    assert study_grid(None) == [[]]
    assert study_grid({"+study": "lenet,mlp", "aug": "none,flip"}) == [
        ["+study=lenet", "aug=none"],
        ["+study=lenet", "aug=flip"],
        ["+study=mlp", "aug=none"],
        ["+study=mlp", "aug=flip"],
    ]
    with pytest.raises(ConfigError, match=r"hydra.sweeper.studies.optimizer.lr=interval\(0.1,1\)"):
        study_grid({"optimizer.lr": "interval(0.1,1)"})


def test_a_compare_job_keeps_the_study_replaces_what_compare_overrides_set_and_adds_the_seed():
    fixed = ["+study=lenet", "data.val_size=5000", "train.epochs=6"]
    best = {"optimizer.lr": 0.0123, "optimizer.momentum": 0.9}
    assert compare_job_overrides(fixed, best, ["data.val_size=0", "train.epochs=15"], 2) == [
        "+study=lenet",
        "optimizer.lr=0.0123",
        "optimizer.momentum=0.9",
        "data.val_size=0",
        "train.epochs=15",
        "seed=2",
    ]


@pytest.mark.slow
def test_each_study_tunes_with_the_same_budget_then_its_best_trial_runs_over_the_seeds(workdir):
    result = run_cli(TUNED, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    storage = f"sqlite:///{workdir / 'outputs' / 'optuna.db'}"
    studies = {
        name: optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)
    }
    assert sorted("+study=lenet·" in n or "+study=mlp·" in n for n in studies) == [True, True]
    assert all(len(study.trials) == 2 for study in studies.values())

    client, runs = runs_of(workdir)
    compared = [r for r in runs if "tuned_from" in r.data.tags]
    assert len(compared) == 4 and len(runs) == 8
    for run in compared:
        best = studies[run.data.tags["tuned_from"]].best_trial
        assert run.data.tags["tuned_trial"] == str(best.number)
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(best.params["optimizer.lr"])
        assert run.data.params["data.val_size"] == "0" and run.data.params["train.epochs"] == "2"
        assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 2
    assert sorted((r.data.params["model.name"], r.data.params["seed"]) for r in compared) == [
        ("lenet", "0"),
        ("lenet", "1"),
        ("mlp", "0"),
        ("mlp", "1"),
    ]
    # The sweep's report compares the four compare runs, two seeds per model; the trials are its Search section.
    report = next(workdir.glob("outputs/multirun/*/*/report/report.md")).read_text()
    assert "each study's best trial trained again" in report and report.count("## Search") == 1
    table = [line for line in result.stdout.splitlines() if line.startswith(("| mlp ", "| lenet "))]
    assert len(table) == 2 and all("| 2 |" in line for line in table)

    relaunch = run_cli(TUNED, workdir)  # every study has its trials, every compare run is FINISHED
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "4 jobs: 0 finished, 0 failed, 0 killed, 4 skipped" in relaunch.stdout
    assert all(len(study.trials) == 2 for study in (optuna.load_study(study_name=n, storage=storage) for n in studies))


@pytest.mark.slow
def test_a_bad_compare_override_is_one_line_before_any_study_or_run(workdir):
    result = run_cli([*TUNED, "hydra.sweeper.compare_overrides=['train.epochz=2']"], workdir)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "train.epochz" in lines[0], result.stderr
    assert not (workdir / "outputs" / "optuna.db").exists() and not (workdir / "outputs" / "mlflow.db").exists()
