"""The report's search section: a real Optuna study in SQLite, its trials real MLflow runs (no CLI, no training)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from lenet_sweep import report
from lenet_sweep.report_search import figure_name, storage_url
from lenet_sweep.store import Store
from lenet_sweep.study import RUN_ID_ATTR
from lenet_sweep.trial import STORAGE_ENV

STUDY = "model=mlp·data.val_size=500·1a2b3c4d"
# (lr, batch size, val_acc per epoch, trial state): trial 2 is the best, trial 3 was pruned after epoch 1.
TRIALS = (
    (0.001, 32, (40.0, 55.0), TrialState.COMPLETE),
    (0.01, 64, (70.0, 80.0), TrialState.COMPLETE),
    (0.05, 32, (85.0, 91.5), TrialState.COMPLETE),
    (0.3, 64, (10.0,), TrialState.PRUNED),
)


def _log_trial_run(runs: Store, experiment_id: str, parent_id: str, number: int, lr: float, batch: int, accs) -> str:
    run_id = runs.create_run(
        experiment_id, f"mlp·lr={lr}", {"study": STUDY, "trial_number": str(number)}, parent_run_id=parent_id
    )
    runs.log_params(run_id, {"model.name": "mlp", "optimizer.lr": lr, "train.batch_size": batch, "seed": 0})
    for epoch, acc in enumerate(accs, start=1):
        metrics = {"train_loss": 1 / epoch, "train_acc": acc, "test_loss": 1 / epoch, "test_acc": acc - 1}
        runs.log_metrics(run_id, epoch, {**metrics, "val_acc": acc, "epoch_seconds": 1.0})
    return run_id


@pytest.fixture
def search_store(tmp_path):
    """An MLflow store with a study's parent run and four trial runs, and the study in an Optuna SQLite storage."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.set_user_attr("metric", "val_acc")
    runs = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = runs.get_or_create_experiment("lenet_sweep", None)
    parent_id = runs.create_run(experiment_id, f"study {STUDY}", {"sweep": "true", "study": STUDY})
    space = {
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 0.3, log=True),
        "train.batch_size": optuna.distributions.CategoricalDistribution([32, 64]),
    }
    run_ids = []
    for number, (lr, batch, accs, state) in enumerate(TRIALS):
        run_id = _log_trial_run(runs, experiment_id, parent_id, number, lr, batch, accs)
        runs.set_tags(run_id, {"trial_state": state.name})
        runs.end_run(run_id, "FINISHED")  # a pruned trial's run ends FINISHED too
        trial = optuna.trial.create_trial(
            params={"optimizer.lr": lr, "train.batch_size": batch},
            distributions=space,
            value=max(accs) if state == TrialState.COMPLETE else None,
            state=state,
            intermediate_values=dict(enumerate(accs, start=1)),
            user_attrs={RUN_ID_ATTR: run_id},
        )
        study.add_trial(trial)
        run_ids.append(run_id)
    runs.end_run(parent_id, "FINISHED")
    return tmp_path, storage, run_ids


def test_the_report_names_each_studys_best_trial_and_draws_its_history(search_store, capsys):
    workdir, storage, run_ids = search_store
    out = workdir / "report"
    args = ["--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--out", str(out), "--optuna-storage", storage]
    assert report.main(args) == 0, capsys.readouterr().err
    page = (out / "report.md").read_text()
    section = page[page.index("## Search") : page.index("## Learning curves")]
    assert f"### Study `{STUDY}`" in section
    assert "4 trials (3 COMPLETE, 1 PRUNED)" in section and "1 PRUNED" in section.split("trial_state")[1]
    assert "**Best trial 2**: val_acc 91.5000; `optimizer.lr=0.05`, `train.batch_size=32`" in section
    assert f"MLflow run `{run_ids[2]}`" in section
    figure = out / figure_name(STUDY)
    assert f"]({figure.name})" in section
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5_000
    importances = dict(line[3:].split("`: ") for line in section.splitlines() if line.startswith("- `"))
    assert set(importances) == {"optimizer.lr", "train.batch_size"}
    assert math.isclose(sum(float(v) for v in importances.values()), 1.0, abs_tol=2e-3)


def test_a_study_missing_from_the_storage_is_named_and_the_report_still_written(search_store, capsys):
    workdir, _, _ = search_store
    other = f"sqlite:///{workdir / 'elsewhere.db'}"
    args = ["--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--out", str(workdir / "r"), "--optuna-storage"]
    assert report.main([*args, other]) == 0, capsys.readouterr().err
    page = (workdir / "r" / "report.md").read_text()
    assert f"### Study `{STUDY}`\n\nNot found in Optuna storage `{other}`" in page
    assert not (workdir / "elsewhere.db").exists()  # reading a report never creates a storage


def test_an_unusable_storage_is_one_line_exit_2_without_its_password(search_store, capsys):
    workdir, _, _ = search_store
    secret = "postgresql://optuna:s3cret-pw@127.0.0.1:1/optuna"
    args = ["--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--out", str(workdir / "r")]
    assert report.main([*args, "--optuna-storage", secret]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --optuna-storage: Optuna storage postgresql://optuna:") and err.count("\n") == 1
    assert "s3cret-pw" not in err


def test_the_storage_defaults_to_the_sweeps_own_then_to_outputs(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path / 'outputs' / 'optuna.db'}"
    monkeypatch.setenv(STORAGE_ENV, "journal:studies.log")  # set by the sweeper in the launching process
    assert storage_url(None, tmp_path) == f"journal:{tmp_path / 'studies.log'}"
    assert storage_url("sqlite:///x.db", tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
