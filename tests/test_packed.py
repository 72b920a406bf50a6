"""``hydra/launcher=packed`` through the CLI: each member job's run equals its solo run; failures stay alone.

Tolerance: per epoch, every metric within 1e-3 of the solo run's (accuracies within one sample's share of
the 200 test / 600 training images). The packed member and the solo job differ only in float32 rounding
(batched kernels against LeNet-5's C kernels or PyTorch's per-model operators).
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.helpers.cli import run_cli, runs_of, start_cli, store_locked, wait_for_runs

# LENET_SWEEP_TEST_DEVICE=cuda runs the equivalence on a GPU (packed CUDA graph against the solo CUDA graph).
DEVICE = os.environ.get("LENET_SWEEP_TEST_DEVICE", "cpu")
SWEEP = ["model=lenet,mlp", "seed=0,1", "optimizer.lr=0.01,1e6", "train.epochs=1", f"device={DEVICE}"]
SMALL_DATA = ["data.train_limit=600", "data.test_limit=200"]
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")


def _by_name(workdir):
    client, runs = runs_of(workdir)
    return client, {run.info.run_name: run for run in runs}


@pytest.mark.slow
def test_packed_sweep_equals_solo_sweep_and_failures_stay_alone(workdir, tmp_path_factory):
    packed = run_cli(["-m", "hydra/launcher=packed", *SWEEP, *SMALL_DATA], workdir)
    assert "Launching 8 jobs in 2 packs" in packed.stdout + packed.stderr  # lenet and mlp never share a pack
    assert packed.returncode == 1, packed.stderr[-3000:]  # the diverging jobs failed; the sweep says so
    solo_dir = tmp_path_factory.mktemp("solo")
    (solo_dir / "data").symlink_to((workdir / "data").resolve())
    solo = run_cli(["-m", *SWEEP, *SMALL_DATA], solo_dir)
    assert solo.returncode == 1, solo.stderr[-3000:]

    client, packed_runs = _by_name(workdir)
    solo_client, solo_runs = _by_name(solo_dir)
    assert sorted(packed_runs) == sorted(solo_runs) and len(packed_runs) == 8
    for name, run in packed_runs.items():
        want = solo_runs[name]
        assert run.info.status == want.info.status, name
        assert run.data.params == want.data.params, name
        if "lr=1000000" in name or "lr=1e+06" in name:
            assert run.info.status == "FAILED" and "DivergedError" in run.data.tags["failure_reason"], name
            continue
        assert run.info.status == "FINISHED", name
        for metric in METRICS:
            got = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
            expected = [m.value for m in solo_client.get_metric_history(want.info.run_id, metric)]
            assert got == pytest.approx(expected, abs=0.5 if metric.endswith("acc") else 1e-3), (name, metric)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model", "hydra", "curves.png"} <= artifacts, name
    statuses = [json.loads(p.read_text()) for p in workdir.glob("outputs/multirun/*/*/*/job_status.json")]
    assert sorted(s["status"] for s in statuses) == ["FAILED"] * 4 + ["FINISHED"] * 4
    assert "Sweep summary: 8 jobs: 4 finished" in packed.stdout and "4 failed" in packed.stdout


@pytest.mark.slow
def test_a_pack_killed_mid_way_resumes_each_member_once(workdir):
    args = ["-m", "hydra/launcher=packed", "seed=0,1", "train.epochs=3", *SMALL_DATA]
    process = start_cli(args, workdir)
    try:
        wait_for_runs(workdir, process, lambda client, runs: len(runs) == 2 and all(r.data.metrics for r in runs))
    finally:
        with store_locked(workdir):  # no member can log another epoch or end its run before the kill
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=60)
    _, killed = _by_name(workdir)
    assert {run.info.status for run in killed.values()} == {"RUNNING"}

    relaunch = run_cli(args, workdir)
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    client, resumed = _by_name(workdir)
    assert {name: run.info.run_id for name, run in resumed.items()} == {n: r.info.run_id for n, r in killed.items()}
    for run in resumed.values():
        assert run.info.status == "FINISHED"
        for metric in METRICS:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [1, 2, 3]
