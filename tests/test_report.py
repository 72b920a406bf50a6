"""The report end to end: real short runs through the real CLI into a real temporary MLflow store,
then ``python -m lenet_sweep.report`` in subprocesses, checked against what the MLflow client returns.

Tests on that store are marked slow (make test-fast leaves them out)."""

from __future__ import annotations

import csv
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import DATA, cli_env, run_cli, runs_of, store_uri

TINY = ["train.epochs=2", "data.train_limit=200", "data.test_limit=100"]
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Report invocations against the filled store: name -> arguments (each writes to its own --out).
REPORTS = {
    "default": [],
    "include_failed": ["--include-failed"],
    "mlp_epoch1": ["--filter", "params.model.name = 'mlp'", "--epoch", "1"],
    "by_seed": ["--group-by", "seed"],
    "wrong_experiment": ["--experiment", "no_such_experiment"],
    "only_failed_match": ["--filter", "params.optimizer.lr = '1000000.0'"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """lenet and mlp x seeds 0, 1 (2 epochs, small subsets), each also with lr=1e6, which diverges (FAILED).

    One sweep, one process: the four diverging jobs cost a fraction of a second each, a separate
    failing command several seconds of imports. The sweep exits 1 because jobs failed, as it should.
    """
    workdir = tmp_path_factory.mktemp("report_store")
    (workdir / "data").symlink_to(DATA)
    sweep = run_cli(["-m", "model=lenet,mlp", "seed=0,1", "optimizer.lr=0.01,1e6", *TINY], workdir)
    assert sweep.returncode == 1, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    assert "8 jobs: 4 finished, 4 failed" in sweep.stdout
    return workdir


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lenet_sweep.report", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def reports(store, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every report invocation, started together (they only read the store), plus the store-level errors."""
    bare = tmp_path_factory.mktemp("no_store")
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = {name: _start([*args, "--out", str(store / "reports" / name)], store) for name, args in REPORTS.items()}
    started["no_store"] = _start([], bare)
    started["unreachable"] = _start(["--tracking-uri", closed_uri], bare)
    results = {}
    for name, proc in started.items():
        stdout, stderr = proc.communicate(timeout=240)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    results["no_store"].bare, results["unreachable"].uri = bare, closed_uri
    return results


def read_csv(store: Path, name: str) -> list[dict[str, str]]:
    with open(store / "reports" / name / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def finished_runs(store: Path):
    client, runs = runs_of(store)
    return client, [r for r in runs if r.info.status == "FINISHED"]


def value_at(client, run, key: str, epoch: int) -> float:
    return next(m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == epoch)


def check_mean_std(row: dict[str, str], key: str, values: list[float]) -> None:
    assert float(row[f"{key}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-9, abs=1e-12)
    assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_table_has_one_row_per_model_with_mean_and_sample_std_over_seeds(store, reports):
    result = reports["default"]
    assert result.returncode == 0, result.stderr
    rows = read_csv(store, "default")
    assert sorted(r["model.name"] for r in rows) == ["lenet", "mlp"]
    assert [float(r["test_acc_mean"]) for r in rows] == sorted((float(r["test_acc_mean"]) for r in rows), reverse=True)
    client, runs = finished_runs(store)
    for row in rows:
        members = [r for r in runs if r.data.params["model.name"] == row["model.name"]]
        assert row["seeds"] == "2" and row["epoch"] == "2" and "optimizer.lr" not in row
        assert row["n_params"] == {"lenet": "44426", "mlp": "49240"}[row["model.name"]]
        for key in METRICS:
            # The last logged value (run.data.metrics) is the epoch-2 value of the history.
            assert [r.data.metrics[key] for r in members] == [value_at(client, r, key, 2) for r in members]
            check_mean_std(row, key, [r.data.metrics[key] for r in members])
        curve = {e: statistics.mean(value_at(client, r, "test_acc", e) for r in members) for e in (1, 2)}
        assert float(row["best_test_acc"]) == pytest.approx(max(curve.values()))
        assert int(row["best_epoch"]) == max(curve, key=curve.get)
        seconds = [m.value for r in members for m in client.get_metric_history(r.info.run_id, "epoch_seconds")]
        assert float(row["epoch_seconds_mean"]) == pytest.approx(statistics.mean(seconds))
    table_lines = result.stdout.strip().splitlines()
    assert table_lines[0].startswith("| model.name | n_params | seeds |") and len(table_lines) == 4
    assert f"| {rows[0]['model.name']} |" in table_lines[2] and " ± " in table_lines[2]


@pytest.mark.slow
def test_report_files_are_written_and_linked(store, reports):
    out = store / "reports" / "default"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curves_lenet.png", "curves_mlp.png", "overview_test_acc.png"]
    from PIL import Image

    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
        with Image.open(out / name) as image:
            image.verify()
            assert image.size[0] >= 600
    page = (out / "report.md").read_text()
    assert set(re.findall(r"\]\(([^)]+\.png)\)", page)) == set(pngs)
    assert (out / "table.md").read_text().strip() == reports["default"].stdout.strip()
    assert "ddof = 1" in page and "## Findings" in page and "Welch" in page
    assert "4 FAILED/KILLED left out" in page
    for count in ("156", "2,416", "30,840", "10,164", "850", "44,426", "47,100", "1,830", "310", "49,240"):
        assert f"| {count} |" in page or f"**{count}**" in page


@pytest.mark.slow
def test_failed_runs_are_excluded_unless_asked_for(store, reports):
    assert all(r["failed"] == "0" for r in read_csv(store, "default"))
    result = reports["include_failed"]
    assert result.returncode == 0, result.stderr
    rows = read_csv(store, "include_failed")
    assert sorted((r["model.name"], r["optimizer.lr"], r["failed"]) for r in rows[2:]) == [
        ("lenet", "1000000.0", "2"),
        ("mlp", "1000000.0", "2"),
    ]  # nothing logged: sorted last
    assert all(r["failed"] == "0" and r["optimizer.lr"] == "0.01" for r in rows[:2])
    assert all(r["test_acc_mean"] == "" and r["seeds"] == "2" for r in rows[2:])
    assert "| failed |" in result.stdout.splitlines()[0]


@pytest.mark.slow
def test_filter_and_epoch_select_runs_and_values(store, reports):
    result = reports["mlp_epoch1"]
    assert result.returncode == 0, result.stderr
    (row,) = read_csv(store, "mlp_epoch1")
    assert row["model.name"] == "mlp" and row["epoch"] == "1"
    client, runs = finished_runs(store)
    mlp = [r for r in runs if r.data.params["model.name"] == "mlp"]
    for key in METRICS:
        check_mean_std(row, key, [value_at(client, r, key, 1) for r in mlp])


@pytest.mark.slow
def test_group_by_seed_gives_one_row_per_seed(store, reports):
    result = reports["by_seed"]
    assert result.returncode == 0, result.stderr
    rows = read_csv(store, "by_seed")
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and list(rows[0])[0] == "seed"
    assert "note: rows mix runs that differ in model.name" in result.stderr
    _, runs = finished_runs(store)
    for row in rows:
        members = [r for r in runs if r.data.params["seed"] == row["seed"]]
        assert row["seeds"] == "2" and row["n_params"] == "44426/49240"
        check_mean_std(row, "test_acc", [r.data.metrics["test_acc"] for r in members])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,expected",
    [
        ("wrong_experiment", "experiment 'no_such_experiment' not found"),
        ("only_failed_match", "no FINISHED runs in experiment 'lenet_sweep' matching filter \"params.optimizer.lr"),
        ("no_store", "does not exist"),
        ("unreachable", "unreachable"),
    ],
)
def test_input_problems_exit_2_with_one_line_naming_them(reports, name, expected):
    result = reports[name]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and result.stdout == ""
    if name == "no_store":
        assert store_uri(result.bare) in lines[0] and not (result.bare / "outputs").exists()
    if name == "unreachable":
        assert result.uri in lines[0]
    if name == "only_failed_match":
        assert "--include-failed" in lines[0]


@pytest.mark.slow
def test_the_runner_hooks_report_a_sweep_and_plot_a_run(store, tmp_path):
    """The calls the sweep callback and the job make: build_report for the sweep's runs, plot_run_curves."""
    from lenet_sweep.figures import plot_run_curves
    from lenet_sweep.report import build_report, run_ids_filter
    from lenet_sweep.store import Store

    client, every_run = runs_of(store, children_only=False)
    (parent,) = [r for r in every_run if r.data.tags.get("sweep") == "true"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 8
    job_run_ids = [r.info.run_id for r in every_run if r is not parent]  # 4 FINISHED, 4 FAILED
    runs = Store(client.tracking_uri)
    report = build_report(
        runs, parent.info.experiment_id, tmp_path / "sweep", filter_string=run_ids_filter(job_run_ids)
    )
    assert sorted(report.table["label"]) == ["lenet", "mlp"] and list(report.table["seeds"]) == [2, 2]
    assert {p.name for p in report.files} == {p.name for p in (tmp_path / "sweep").iterdir()}
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "test_loss": 1.2 / e,
            "train_acc": 90 + e,
            "test_acc": 89 + e,
            "epoch_seconds": 1.0,
        }
        for e in (1, 2, 3)
    ]
    assert len(plot_run_curves(history, "lenet·none·sgd·s0").axes) == 2
    finished = [r for r in every_run if r.info.status == "FINISHED" and r is not parent]
    assert len(finished) == 4
    for run in finished:  # each job logged plot_run_curves' figure as curves.png
        curves = Path(client.download_artifacts(run.info.run_id, "curves.png", str(tmp_path / run.info.run_id)))
        assert curves.read_bytes().startswith(PNG_SIGNATURE)


def test_default_group_by_drops_seed_bookkeeping_and_redundant_keys():
    import pandas as pd

    from lenet_sweep.report import default_group_by

    runs = [
        ("lenet", "lenet", "none", "none", "0.0"),
        ("mlp", "mlp", "none", "none", "0.0"),
        ("lenet_reg", "lenet", "dropout_bn", "none", "0.0"),
        ("lenet", "lenet", "none", "flip", "0.5"),
    ]
    frame = pd.DataFrame(
        [
            {
                "model.name": m,
                "model.arch": a,
                "model.regularization.name": r,
                "aug.name": g,
                "aug.hflip_p": p,
                "seed": str(s),
                "data.root": f"/tmp/{s}",
                "mlflow.tracking_uri": f"sqlite:///{s}",
                "n_params": "1",
            }
            for (m, a, r, g, p) in runs
            for s in (0, 1, 2)
        ]
    )
    assert default_group_by(frame) == ["model.name", "aug.name"]
    # mlp with and without dropout: regularization no longer follows model.name, so it becomes a column.
    frame.loc[(frame["model.name"] == "mlp") & (frame["seed"] == "2"), "model.regularization.name"] = "dropout"
    assert default_group_by(frame) == ["model.name", "aug.name", "model.regularization.name"]


def test_one_curves_figure_draws_each_curves_in_turn_within_its_fixed_margins():
    """A sweep draws every run's and configuration's curves on one ``CurvesFigure``: each draw shows only its
    own curves, and the fixed margins hold the longest tick labels (panels, labels and legends inside the
    figure, side by side)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lenet_sweep.figures import CurvesFigure

    figure = CurvesFigure()
    banded = {
        "epoch": [1, 2, 3],
        "train_loss": [1e-4, 2e-4, 3e-4],
        "train_loss_std": [2e-4] * 3,  # the band dips below zero: tick labels such as -0.0001
        "test_loss": [6e-4] * 3,
        "train_acc": [99.9] * 3,
        "train_acc_std": [3.0] * 3,
        "test_acc": [1.0, 50.0, 100.0],
    }
    fig = figure.draw(banded, "banded")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    left, right = (ax.get_tightbbox(renderer) for ax in fig.axes)
    title = figure.title.get_window_extent(renderer)
    assert 0 <= left.x0 and left.x1 < right.x0 and right.x1 <= fig.bbox.width
    assert 0 <= min(left.y0, right.y0) and max(left.y1, right.y1) < title.y0 and title.y1 <= fig.bbox.height
    assert [len(ax.collections) for ax in fig.axes] == [1, 1]

    fig = figure.draw({"epoch": [1, 2], "train_loss": [2.3, 12345.6], "test_loss": [2.2, 2.1]}, "plain")
    loss, accuracy = fig.axes
    assert [line.get_label() for line in loss.lines] == ["train", "test"] and not loss.collections
    assert not accuracy.lines and not accuracy.collections and accuracy.get_legend() is None
    canvas.draw()
    assert loss.get_ylim()[1] > 12345.6 and loss.get_xlim()[1] < 3  # scaled to these curves alone
    assert fig.get_suptitle() == "plain"
