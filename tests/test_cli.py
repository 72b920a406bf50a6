"""The runner end to end: the real CLI in a subprocess, a real SQLite MLflow store in a temp dir."""

import time

import pytest

from tests.helpers.cli import DATA, SMALL, run_cli, runs_of
from tests.helpers.services import free_port

METRICS = {"train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds"}
GRID = ["-m", "model=lenet,mlp,lenet_reg", "aug=none,flip"]

pytestmark = pytest.mark.slow  # CLI subprocesses (make test-fast leaves these out)


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """The README's grid, one epoch on small subsets: the CI smoke run."""
    workdir = tmp_path_factory.mktemp("smoke")
    (workdir / "data").symlink_to(DATA)
    result = run_cli(GRID + SMALL, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


def test_smoke_sweep_logs_six_finished_runs_with_every_metric(smoke_sweep):
    workdir, _ = smoke_sweep
    client, runs = runs_of(workdir)
    assert len(runs) == 6
    expected = {(m, a) for m in ("lenet", "mlp", "lenet_reg") for a in ("none", "flip")}
    assert {(r.data.params["model.name"], r.data.params["aug.name"]) for r in runs} == expected
    for run in runs:
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) == METRICS
        for key in METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1]
        params = run.data.params
        assert params["train.epochs"] == "1" and params["train.batch_size"] == "64"
        assert params["optimizer.name"] == "sgd" and params["optimizer.lr"] == "0.01"
        expected_params = {"lenet": "44426", "mlp": "49240", "lenet_reg": "44878"}[params["model.name"]]
        assert params["n_params"] == expected_params
        assert run.info.run_name.startswith(params["model.name"] + "·" + params["aug.name"])


def test_smoke_sweep_stores_config_weights_and_outputs_under_outputs(smoke_sweep):
    workdir, result = smoke_sweep
    client, runs = runs_of(workdir)
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"model", "hydra"} <= artifacts
    assert any((workdir / "outputs" / "multirun").iterdir())
    assert not (workdir / "multirun").exists()
    assert "Sweep summary: 6 jobs: 6 finished, 0 failed" in result.stdout


def test_smoke_sweep_has_one_parent_run_with_six_children(smoke_sweep):
    workdir, _ = smoke_sweep
    client, every_run = runs_of(workdir, children_only=False)
    parents = [r for r in every_run if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in every_run if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 6
    assert parents[0].data.metrics["jobs_finished"] == 6 and parents[0].data.metrics["jobs_failed"] == 0
    assert "curves.png" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert "report/report.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}


def test_same_config_and_seed_give_identical_metrics(workdir):
    # Two jobs of one config in one sweep; across processes, the SIGKILL resume test compares histories.
    result = run_cli(["-m", "seed=0,0", "model=lenet_reg", "aug=flip", "sweep.skip_finished=false"] + SMALL, workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    client, runs = runs_of(workdir)
    assert len(runs) == 2
    assert runs[0].data.metrics == {**runs[1].data.metrics, "epoch_seconds": runs[0].data.metrics["epoch_seconds"]}


def test_unreachable_tracking_server_fails_fast_before_training(workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli(SMALL + [f"mlflow.tracking_uri={uri}"], workdir)
    assert result.returncode == 2
    assert time.monotonic() - started < 60
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and uri in error_lines[0] and "unreachable" in error_lines[0], result.stderr
    assert "Epoch" not in result.stdout


def test_a_broken_install_stops_the_sweep_with_one_line_before_any_job(workdir, tmp_path_factory):
    """Hydra only warns about a callback's exception; the sweep must not go on untracked. A cryptography
    package that fails to import (MLflow's SQL store needs it) is a broken install the tests can build."""
    broken = tmp_path_factory.mktemp("broken_site")
    (broken / "cryptography").mkdir()
    (broken / "cryptography" / "__init__.py").write_text("raise ImportError('this cryptography is broken')\n")
    result = run_cli(["-m", "seed=0,1", *SMALL], workdir, PYTHONPATH=str(broken))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the sweep cannot start: ImportError: this cryptography is broken"], result.stderr
    assert "Epoch 1" not in result.stdout + result.stderr and not list(workdir.glob("outputs/multirun/*/*/*"))


def test_one_full_epoch_of_lenet_reaches_97_percent(workdir):
    result = run_cli(["train.epochs=1"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    _, runs = runs_of(workdir)
    assert runs[0].data.metrics["test_acc"] >= 97.0


@pytest.mark.parametrize("uri", ["file:///tmp/lenet-sweep-mlruns", "mlruns"])
def test_a_file_store_uri_fails_with_one_line_naming_the_replacement(workdir, uri):
    for args in ([], ["-m", "seed=0,1"]):
        result = run_cli(args + SMALL + [f"mlflow.tracking_uri={uri}"], workdir)
        assert result.returncode == 2
        error_lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(error_lines) == 1 and uri in error_lines[0], result.stderr
        assert "file stores are not supported" in error_lines[0] and "sqlite:///" in error_lines[0]
        assert "Epoch" not in result.stdout and not (workdir / "outputs" / "mlflow.db").exists()


def test_hydra_flag_errors_are_one_line(workdir):
    result = run_cli(["-m", "--cfg", "job"], workdir)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"
    )
