"""The MLflow UI in a real browser: ``mlflow ui`` over a store the real CLI filled, read by headless Chromium.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped without it.
"""

from __future__ import annotations

import json

import pytest

from scripts.ui_screenshot import SHARED_VIEW_KEY
from tests.helpers.cli import REPO, SMALL, cli_env, run_cli, runs_of, store_uri
from tests.helpers.services import (
    find_chromium,
    free_port,
    run_chromium,
    start_mlflow,
    stop_process_group,
)

RUN_NAMES = tuple(f"{model}·none·sgd·s0·epochs=1·train_limit=600·test_limit=200" for model in ("lenet", "mlp"))

pytestmark = [
    pytest.mark.slow,  # a CLI sweep, mlflow ui and Chromium (make test-fast leaves these out)
    pytest.mark.skipif(
        find_chromium() is None,
        reason="chromium not found: `apt-get install chromium` to run the MLflow UI browser test",
    ),
]


@pytest.fixture
def mlflow_ui(workdir, tmp_path):
    """``mlflow ui`` on a free loopback port over a store holding the two runs of a real two-model sweep."""
    result = run_cli(["-m", "model=lenet,mlp"] + SMALL, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, runs = runs_of(workdir)
    assert sorted(r.info.run_name for r in runs) == sorted(RUN_NAMES)
    experiment_id = runs[0].info.experiment_id

    server, base = start_mlflow("ui", store_uri(workdir), free_port(), tmp_path / "mlflow-ui.log", env=cli_env())
    try:
        yield base, experiment_id
    finally:
        stop_process_group(server)


def test_runs_page_lists_both_runs_in_headless_chromium(mlflow_ui, tmp_path):
    base, experiment_id = mlflow_ui
    # The experiment's default page (MLflow 3) is the GenAI overview, which lists no runs: open the runs table.
    # Sorting by run name (any sort but the default start time) shows child runs flat instead of folded
    # under the sweep's parent run.
    url = f"{base}/#/experiments/{experiment_id}/runs?orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"
    dom = ""
    for attempt, budget_ms in enumerate((15_000, 30_000)):  # a slow machine gets a second, longer look
        dom = run_chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], tmp_path / f"profile-{attempt}")
        if all(name in dom for name in RUN_NAMES):
            break
    missing = [name for name in RUN_NAMES if name not in dom]
    assert not missing, f"{missing} not rendered at {url}; DOM ({len(dom)} chars) ends:\n{dom[-2000:]}"


def test_the_chart_view_groups_seeds_by_config_group(workdir, tmp_path):
    result = run_cli(["-m", "model=mlp", "optimizer.lr=0.01,0.02", "seed=0,1"] + SMALL, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, runs = runs_of(workdir)
    groups = {r.data.tags["config_group"] for r in runs}
    assert len(runs) == 4 and len(groups) == 2

    picture = tmp_path / "grouped.png"
    shot = run_cli(
        ["--store", store_uri(workdir), "--group-by-tag", "config_group", "--out", str(picture)],
        REPO,
        module="scripts.ui_screenshot",
    )
    # The script fails unless the page it opened shows every group's label.
    assert shot.returncode == 0, shot.stdout[-3000:] + shot.stderr[-3000:]
    assert picture.stat().st_size > 10_000
    view = json.loads(
        client.get_experiment(runs[0].info.experiment_id).tags[f"mlflow.sharedViewState.{SHARED_VIEW_KEY}"]
    )
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "config_group"}]
