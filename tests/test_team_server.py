"""The team setup for real: a local PostgreSQL (scripts/postgres-local.sh) and the authenticated ``mlflow server``
on it (scripts/mlflow_team_server.py); sweeps log through the jobs user's login, reports read back through it.

One PostgreSQL and one server serve the whole module; each test uses its own experiment.
"""

from __future__ import annotations

import base64
import os
import signal
import stat
import urllib.error
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.helpers.cli import DATA, SMALL, SMALL_SEARCH, run_cli, start_cli
from tests.helpers.runs import METRICS, assert_one_parent_with_children, steps
from tests.helpers.services import free_port, paused
from tests.helpers.team import postgres_local, postgres_missing_reason, start_postgres, start_team_server

pytestmark = pytest.mark.slow  # PostgreSQL, an MLflow server and CLI sweeps

LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
TWO_EPOCHS = ["train.epochs=2", "data.train_limit=600", "data.test_limit=200"]


@pytest.fixture(scope="module")
def postgres():
    reason = postgres_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """The authenticated server; this test process reads it back as the admin."""
    root = tmp_path_factory.mktemp("team-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = start_team_server(postgres, root / "state", root / "artifacts", free_port(), root / "server.log", env)
    saved = {key: os.environ.get(key) for key in LOGIN}
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=server.admin_password)
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def experiment_runs(uri: str, experiment: str, children_only: bool = False):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id])
    return client, [r for r in runs if not (children_only and r.data.tags.get("sweep") == "true")]


def assert_no_secret_in_runs(runs, secrets):
    for run in runs:
        logged = [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
        for secret in secrets:
            assert not any(secret in value for value in logged), f"a password in run {run.info.run_name}"


@pytest.fixture(scope="module")
def joblib_sweep(team, tmp_path_factory):
    """Two jobs x 2 epochs under joblib, logged as the jobs user; (CompletedProcess, its working directory)."""
    workdir = tmp_path_factory.mktemp("joblib-sweep")
    (workdir / "data").symlink_to(DATA)
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=lenet,mlp", *TWO_EPOCHS]
    result = run_cli([*args, "mlflow.experiment=team_joblib"], workdir, **team.jobs_env)
    return result, workdir


def test_postgres_local_serves_on_loopback_and_keeps_its_passwords_private(postgres):
    status = postgres_local("status", postgres.state_dir)
    assert status.returncode == 0, status.stdout + status.stderr
    assert set(postgres.uris) == {"PG_MLFLOW_URI", "PG_MLFLOW_AUTH_URI", "PG_OPTUNA_URI"}
    assert all(uri.startswith("postgresql+psycopg://") and "@127.0.0.1:" in uri for uri in postgres.uris.values())
    assert stat.S_IMODE((postgres.state_dir / "credentials.env").stat().st_mode) == 0o600


def test_a_joblib_sweep_through_the_login_logs_every_metric_point(team, joblib_sweep, postgres):
    result, _ = joblib_sweep
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, every_run = experiment_runs(team.uri, "team_joblib")
    _, in_database = experiment_runs(postgres.uris["PG_MLFLOW_URI"], "team_joblib")  # the server's backend
    assert {r.info.run_id for r in in_database} == {r.info.run_id for r in every_run}
    for run in assert_one_parent_with_children(every_run, 2):
        assert run.info.status == "FINISHED"
        for key in METRICS:
            assert steps(client, run.info.run_id, key) == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"curves.png"}


def test_no_password_in_params_tags_run_names_or_the_console(team, joblib_sweep):
    result, _ = joblib_sweep
    secrets = [team.jobs_env["MLFLOW_TRACKING_PASSWORD"], team.admin_password]
    _, every_run = experiment_runs(team.uri, "team_joblib")
    assert every_run
    assert_no_secret_in_runs(every_run, secrets)
    assert not any(secret in result.stdout + result.stderr for secret in secrets)


def test_report_and_status_read_the_runs_back_through_the_login(team, joblib_sweep, tmp_path):
    _, workdir = joblib_sweep
    where = ["--tracking-uri", team.uri, "--experiment", "team_joblib"]
    report = run_cli([*where, "--out", str(tmp_path / "report")], workdir, module="lenet_sweep.report", **team.jobs_env)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "lenet" in text and "mlp" in text
    status = run_cli(where, workdir, module="lenet_sweep.status", **team.jobs_env)
    assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
    assert status.stdout.count("FINISHED") >= 2


def test_the_ui_is_behind_the_login(team):
    def status_of(login: tuple[str, str] | None) -> int:
        request = urllib.request.Request(team.uri + "/")
        if login:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    jobs = (team.jobs_env["MLFLOW_TRACKING_USERNAME"], team.jobs_env["MLFLOW_TRACKING_PASSWORD"])
    assert status_of(None) == 401
    assert status_of((jobs[0], "not-" + jobs[1])) == 401
    assert status_of(jobs) == 200


@pytest.mark.parametrize("login", ["wrong password", "unknown user"])
def test_a_refused_login_is_one_line_and_exit_2_before_any_run(team, workdir, login):
    env = dict(team.jobs_env)
    if login == "wrong password":
        env["MLFLOW_TRACKING_PASSWORD"] = "not-" + env["MLFLOW_TRACKING_PASSWORD"]
    else:
        env["MLFLOW_TRACKING_USERNAME"] = "nobody"
    experiment = "team_" + login.replace(" ", "_")
    result = run_cli(["-m", "model=mlp", *SMALL, f"mlflow.experiment={experiment}"], workdir, **env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and team.uri in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0], result.stderr
    assert env["MLFLOW_TRACKING_PASSWORD"] not in result.stdout + result.stderr
    assert "Epoch 1" not in result.stdout
    assert experiment_runs(team.uri, experiment)[1] == []


def test_an_experiment_the_server_refuses_is_one_line_and_exit_2_before_any_run(team, workdir):
    admin = MlflowClient(team.uri)
    admin.create_experiment("team_admins_only")  # the jobs user may only read it (default_permission = READ)
    result = run_cli(["-m", "model=mlp", *SMALL, "mlflow.experiment=team_admins_only"], workdir, **team.jobs_env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'team_admins_only' (403 Forbidden)" in lines[0] and team.uri in lines[0], result.stderr
    assert experiment_runs(team.uri, "team_admins_only")[1] == []


def test_a_sigkilled_job_is_resumed_through_the_server(team, workdir):
    args = ["train.epochs=3", "data.train_limit=600", "data.test_limit=200", "train.threads=1"]
    args.append("mlflow.experiment=team_resume")
    process = start_cli(args, workdir, **team.jobs_env)
    for line in process.stdout:
        if "Epoch 1:" in line:
            # The paused server lets the job log nothing more, so the kill lands mid-run however long an epoch takes.
            with paused(team.process):
                os.killpg(process.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
                process.wait(timeout=60)
            break
    client, runs = experiment_runs(team.uri, "team_resume")
    assert [r.info.status for r in runs] == ["RUNNING"]

    resumed = run_cli(args, workdir, **team.jobs_env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resume" in resumed.stdout
    client, runs = experiment_runs(team.uri, "team_resume")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in METRICS:
        assert steps(client, runs[0].info.run_id, key) == [1, 2, 3]


def test_a_two_job_slurm_sweep_through_the_login(team, workdir, slurm_env):
    slurm = ["hydra/launcher=slurm", "hydra.launcher.partition=local", "hydra.launcher.cpus_per_task=1"]
    args = ["-m", *slurm, "model=lenet,mlp", *TWO_EPOCHS, "mlflow.experiment=team_slurm"]
    result = run_cli(args, workdir, SLURM_CONF=slurm_env["SLURM_CONF"], PATH=slurm_env["PATH"], **team.jobs_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, every_run = experiment_runs(team.uri, "team_slurm")
    for run in assert_one_parent_with_children(every_run, 2):
        assert run.info.status == "FINISHED"
        for key in METRICS:
            assert steps(client, run.info.run_id, key) == [1, 2]


def test_a_sweep_straight_into_postgres_and_a_wrong_password_there(postgres, workdir):
    uri = postgres.uris["PG_MLFLOW_URI"]
    password = uri.split("@")[0].rsplit(":", 1)[1]
    result = run_cli(["-m", "model=mlp", *SMALL, "mlflow.experiment=team_direct"], workdir, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert password not in result.stdout + result.stderr
    client, every_run = experiment_runs(uri, "team_direct")
    (run,) = assert_one_parent_with_children(every_run, 1)
    assert steps(client, run.info.run_id) == [1]
    assert_no_secret_in_runs(every_run, [password])

    wrong = uri.replace(f":{password}@", ":wrong-password@")
    refused = run_cli(["-m", "model=mlp", *SMALL, "mlflow.experiment=team_refused"], workdir, MLFLOW_TRACKING_URI=wrong)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "wrong-password" not in lines[0], refused.stderr
    assert experiment_runs(uri, "team_refused")[1] == []


def test_a_search_keeps_its_study_in_postgres_and_its_trials_behind_the_login(team, postgres, workdir):
    storage = postgres.uris["PG_OPTUNA_URI"]
    args = [
        *SMALL_SEARCH,
        "train.epochs=1",
        "optimizer.lr=tag(log,interval(1e-3,0.3))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.study_name=team_search",
        "mlflow.experiment=team_search",
    ]
    # The storage URL goes in through the environment, as docs/team.md says: never on a logged command line.
    result = run_cli(
        [*args, "hydra.sweeper.storage=${oc.env:PG_OPTUNA_URI}"], workdir, PG_OPTUNA_URI=storage, **team.jobs_env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="team_search", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    client, runs = experiment_runs(team.uri, "team_search", children_only=True)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [0, 1]
    for run in runs:
        trial = study.trials[int(run.data.tags["trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert trial.value == max(m.value for m in client.get_metric_history(run.info.run_id, "val_acc"))
    password = storage.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in result.stdout + result.stderr
