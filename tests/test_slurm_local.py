"""scripts/slurm-local.sh: a real one-node SLURM cluster on loopback (fixture in conftest.py)."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a SLURM cluster (make test-fast leaves these out)


def _wait_for_job(job_id: str, env: dict[str, str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if state and state not in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}:
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], env=env, check=False)
    pytest.fail(f"job {job_id} still {state or 'unknown'} after {timeout} s")


def test_sbatch_wrap_job(slurm_env: dict[str, str], tmp_path: Path) -> None:
    res = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--partition=local",
            f"--chdir={tmp_path}",
            "--output=job-%j.out",
            "--wrap",
            "hostname; echo slurm-local-ok",
        ],
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = res.stdout.strip().split(";")[0]
    assert _wait_for_job(job_id, slurm_env) == "COMPLETED"
    out = (tmp_path / f"job-{job_id}.out").read_text()
    assert socket.gethostname() in out
    assert "slurm-local-ok" in out


def test_submitit_round_trip(
    slurm_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm_env["PATH"])
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    assert executor.cluster == "slurm"
    # Well past SLURM's warning window (submitit's 90 s signal delay plus the scheduler's 30 s check
    # period): with a shorter limit the USR2 can come before Python is up, and kill the job.
    executor.update_parameters(slurm_partition="local", timeout_min=10, cpus_per_task=1)

    def answer() -> int:
        return 42

    with caplog.at_level(logging.WARNING, logger="submitit"):
        job = executor.submit(answer)
        # Poll with a deadline so a job that never ends cannot hang the test.
        deadline = time.monotonic() + 45
        while not job.done() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not job.done():
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} did not finish in 45 s")
        assert job.result() == 42
    # The cluster's sacct stand-in answers, so submitit has nothing to warn about.
    assert not [r.getMessage() for r in caplog.records if r.name == "submitit"]


def test_submitit_sees_a_cancelled_job_end(slurm_env: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm_env["PATH"])
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    executor.update_parameters(slurm_partition="local", timeout_min=10, cpus_per_task=1)
    job = executor.submit(time.sleep, 120)
    subprocess.run(["scancel", job.job_id], env=slurm_env, check=True)
    deadline = time.monotonic() + 30
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.done(), "submitit must learn that a cancelled job ended"
    assert job.state.startswith("CANCELLED")
