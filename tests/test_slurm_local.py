"""Integration tests for scripts/slurm-local.sh: a real one-node SLURM cluster on loopback.

The module fixture starts the cluster (installing slurm-wlm/munge via apt when missing) unless it
is already running, and stops it afterwards only if it started it. Without root or apt the module
is skipped.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-local.sh"
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

# What submitit logs (logger "submitit", WARNING) on every status poll when sacct has no
# accounting storage; everything else it logs must stay visible.
SACCT_WARNING = re.compile(r"^Call #\d+ - Bypassing sacct error .*, status may be inaccurate\.$")


def _script(action: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    if not sys.platform.startswith("linux") or shutil.which("bash") is None:
        pytest.skip("slurm-local.sh needs Linux and bash")
    started = False
    res = _script("status", timeout=30)
    if res.returncode != 0:  # not running: start it (first use includes the apt install)
        res = _script("start", timeout=600)
        if res.returncode != 0:
            if os.geteuid() != 0 or shutil.which("slurmctld", path=SBIN_PATH) is None:
                tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-3:])
                pytest.skip(f"local SLURM cluster unavailable (needs root, apt-get): {tail}")
            pytest.fail(f"slurm-local.sh start failed:\n{res.stdout}\n{res.stderr}")
        started = True
    match = re.search(r"^export SLURM_CONF=(\S+)$", res.stdout, re.MULTILINE)
    assert match, f"no SLURM_CONF line in:\n{res.stdout}"
    try:
        yield {**os.environ, "SLURM_CONF": match.group(1), "PATH": SBIN_PATH}
    finally:
        if started:
            stop = _script("stop", timeout=120)
            assert stop.returncode == 0, f"slurm-local.sh stop failed:\n{stop.stdout}\n{stop.stderr}"


def _wait_for_job(job_id: str, env: dict[str, str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        if state and state not in {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}:
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], env=env, check=False)
    pytest.fail(f"job {job_id} still {state or 'unknown'} after {timeout} s")


def test_sbatch_wrap_job(slurm_env: dict[str, str], tmp_path: Path) -> None:
    res = subprocess.run(
        ["sbatch", "--parsable", "--partition=local", f"--chdir={tmp_path}",
         "--output=job-%j.out", "--wrap", "hostname; echo slurm-local-ok"],
        env=slurm_env, capture_output=True, text=True, timeout=30, check=True,
    )
    job_id = res.stdout.strip().split(";")[0]
    assert _wait_for_job(job_id, slurm_env) == "COMPLETED"
    out = (tmp_path / f"job-{job_id}.out").read_text()
    assert socket.gethostname() in out
    assert "slurm-local-ok" in out


def test_submitit_round_trip(
    slurm_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm_env["PATH"])
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition="local", timeout_min=2, cpus_per_task=1)

    def answer() -> int:
        return 42

    with caplog.at_level(logging.WARNING, logger="submitit"):
        job = executor.submit(answer)
        # Without accounting, submitit never learns a job's state (always UNKNOWN) and only the
        # result file ends the wait: poll with a deadline so a killed job can't hang the test.
        deadline = time.monotonic() + 45
        while not job.done() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not job.done():
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} did not finish in 45 s")
        assert job.result() == 42
    unexpected = [r.getMessage() for r in caplog.records
                  if r.name == "submitit" and not SACCT_WARNING.match(r.getMessage())]
    assert not unexpected, unexpected
