"""A sweep over its life: planned before it runs, watched while it runs, relaunched after the code changed."""

import multiprocessing
import shutil
import subprocess

import pytest

from tests.helpers.cli import REPO, SMALL, run_cli, runs_of
from tests.helpers.jobs import run_and_die_after_epoch, run_in_process
from tests.helpers.runs import steps

pytestmark = pytest.mark.slow  # CLI sweeps

FOUR_EPOCHS = ["train.epochs=4", "data.train_limit=600", "data.test_limit=200", "train.threads=1"]


def test_the_plan_of_a_partly_finished_sweep_says_skip_resume_new_and_creates_no_run(workdir):
    run_in_process(workdir, "seed=0", *FOUR_EPOCHS)
    died = multiprocessing.get_context("spawn").Process(
        target=run_and_die_after_epoch, args=(workdir, ("seed=1", *FOUR_EPOCHS), 2)
    )
    died.start()
    died.join(timeout=300)
    client, before = runs_of(workdir, children_only=False)

    plan = run_cli(["-m", "seed=0,1,2", *FOUR_EPOCHS, "sweep.plan=true"], workdir)
    assert plan.returncode == 0, plan.stderr[-3000:]
    lines = plan.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["lenet·none·sgd·s0·epochs=4·train_limit=600·test_limit=200", "skip"],
        ["lenet·none·sgd·s1·epochs=4·train_limit=600·test_limit=200", "resume"],
        ["lenet·none·sgd·s2·epochs=4·train_limit=600·test_limit=200", "new"],
    ]
    assert "FINISHED" in lines[0] and "(same config, same data" in lines[0]
    assert "from epoch 3 of 4 (left RUNNING by a process that is gone)" in lines[1], lines[1]
    assert lines[-1] == "3 jobs: 1 skip, 1 new, 1 resume"
    _, after = runs_of(workdir, children_only=False)
    assert {(r.info.run_id, r.info.status) for r in after} == {(r.info.run_id, r.info.status) for r in before}
    assert not any(r.data.tags.get("sweep") == "true" for r in after), "a plan creates no parent run"
    by_seed = {r.data.params["seed"]: r for r in after}
    assert by_seed["0"].data.tags["config_group"] == by_seed["1"].data.tags["config_group"]
    assert by_seed["0"].data.tags["config_fingerprint"] != by_seed["1"].data.tags["config_fingerprint"]


def test_a_run_killed_after_its_last_checkpoint_is_planned_as_ending_only_and_relaunch_ends_it(workdir):
    args = ["train.epochs=2", "data.train_limit=600", "data.test_limit=200"]
    assert run_cli(args, workdir).returncode == 0
    client, (run,) = runs_of(workdir)
    # What a kill between the last epoch's checkpoint and the run's end leaves: every epoch, status KILLED.
    client.set_terminated(run.info.run_id, "KILLED")

    plan = run_cli(["-m", *args, "sweep.plan=true"], workdir)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "resume" in plan.stdout and "all 2 epochs done: only ends the run (KILLED)" in plan.stdout, plan.stdout

    relaunch = run_cli(args, workdir)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    client, runs = runs_of(workdir)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run.info.run_id, "FINISHED")]
    assert steps(client, run.info.run_id) == [1, 2]


def test_status_lists_every_job_of_the_latest_sweep_and_fails_while_one_failed(workdir):
    sweep = run_cli(["-m", "model=mlp", "optimizer.lr=0.01,1e6", *SMALL], workdir)
    assert sweep.returncode == 1

    status = run_cli([], workdir, module="lenet_sweep.status")
    assert status.returncode == 1, status.stderr
    rows = {line.split()[1]: line.split() for line in status.stdout.splitlines()[2:-1]}
    finished = rows["mlp·none·sgd·s0·lr=0.01·epochs=1·train_limit=600·test_limit=200"]
    failed = rows["mlp·none·sgd·s0·lr=1000000.0·epochs=1·train_limit=600·test_limit=200"]
    assert finished[0] == "FINISHED" and finished[2] == "1/1" and float(finished[3]) > 0 and finished[-1] == "ago"
    assert failed[0] == "FAILED" and failed[2] == "0/1"
    assert status.stdout.splitlines()[-1] == "1 of 2 jobs FINISHED"
    _, runs = runs_of(workdir)
    assert runs[0].data.tags["config_group"] != runs[1].data.tags["config_group"]

    missing_sweep = run_cli(["--sweep", "0123456789abcdef"], workdir, module="lenet_sweep.status")
    assert missing_sweep.returncode == 2 and missing_sweep.stderr.startswith("error: --sweep 0123456789abcdef")


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def code_checkout(tmp_path_factory):
    """The package and its configs in a git repository of their own, with one commit, as a user's clone."""
    repo = tmp_path_factory.mktemp("checkout")
    for name in ("lenet_sweep", "conf"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "first")
    return repo


def test_a_relaunch_after_a_code_change_names_both_commits_and_code_mode_reruns(workdir, code_checkout):
    env = {"PYTHONPATH": str(code_checkout)}
    first = run_cli(SMALL, workdir, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    first_commit = git(code_checkout, "rev-parse", "HEAD")
    _, (run,) = runs_of(workdir)
    assert run.data.tags["mlflow.source.git.commit"] == first_commit and run.data.tags["git_dirty"] == ""

    with open(code_checkout / "lenet_sweep" / "models.py", "a") as models:
        models.write("\n# a change to the model's code\n")
    git(code_checkout, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qam", "second")
    second_commit = git(code_checkout, "rev-parse", "HEAD")

    relaunch = run_cli(SMALL, workdir, **env)
    assert relaunch.returncode == 0
    skip = next(line for line in (relaunch.stdout + relaunch.stderr).splitlines() if "skip" in line)
    assert first_commit[:10] in skip and second_commit[:10] in skip and "code differs" in skip

    rerun = run_cli(SMALL + ["sweep.skip_finished=code"], workdir, **env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, runs = runs_of(workdir)
    assert sorted(r.data.tags["mlflow.source.git.commit"] for r in runs) == sorted([first_commit, second_commit])
    assert {r.info.status for r in runs} == {"FINISHED"}
