"""``make optuna-dashboard``'s server in a real browser: optuna-dashboard over a real study storage, read by headless
Chromium, as tests/test_ui.py reads the MLflow UI. Needs Debian's ``chromium``; skipped without it."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from lenet_sweep.study import RUN_ID_ATTR
from tests.helpers.services import (
    _group_alive,
    find_chromium,
    free_port,
    run_chromium,
    start_optuna_dashboard,
    stop_process_group,
)

STUDY = "model=mlp·data.val_size=500·5e6f7a8b"

pytestmark = [
    pytest.mark.slow,  # a web server and Chromium (make test-fast leaves these out)
    pytest.mark.skipif(
        find_chromium() is None,
        reason="chromium not found: `apt-get install chromium` to run the optuna-dashboard browser test",
    ),
]


def _small_study(storage: str) -> None:
    """A study as the sweeper leaves one: its settings as user attributes, complete and pruned trials."""
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.set_user_attr("metric", "val_acc")
    lr = optuna.distributions.FloatDistribution(1e-3, 0.3, log=True)
    for number, (value, state) in enumerate(
        [(82.0, TrialState.COMPLETE), (90.5, TrialState.COMPLETE), (None, TrialState.PRUNED)]
    ):
        study.add_trial(
            optuna.trial.create_trial(
                params={"optimizer.lr": 0.003 * 4**number},
                distributions={"optimizer.lr": lr},
                value=value,
                state=state,
                intermediate_values={1: value or 11.0},
                user_attrs={RUN_ID_ATTR: f"run{number}"},
            )
        )


def test_the_dashboard_lists_the_study_in_headless_chromium(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _small_study(storage)
    server, base = start_optuna_dashboard(storage, free_port(), tmp_path / "dashboard.log")
    try:
        dom = ""
        for attempt, budget_ms in enumerate((10_000, 30_000)):  # a slow machine gets a second, longer look
            dom = run_chromium(
                [f"--virtual-time-budget={budget_ms}", "--dump-dom", f"{base}/dashboard"], tmp_path / f"p{attempt}"
            )
            if STUDY in dom:
                break
        assert STUDY in dom, f"study not rendered at {base}/dashboard; DOM ({len(dom)} chars) ends:\n{dom[-2000:]}"
    finally:
        stop_process_group(server)
    assert server.returncode is not None and not _group_alive(server.pid)  # exactly what it started, gone
