"""Run ownership: who owns a RUNNING run, when it is orphaned, how it changes hands, and a failing heartbeat."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from lenet_sweep import ownership
from lenet_sweep.ownership import (
    GENERATION_TAG,
    HEARTBEAT_TAG,
    HOST_TAG,
    OWNER_TAG,
    PID_TAG,
    ClaimLost,
    Heartbeat,
    claim,
    orphan_reason,
    owner_token,
)
from lenet_sweep.store import Store

WINDOW_SECONDS = 600.0
HOST = socket.gethostname()


def tags_of(pid: int, heartbeat_age_seconds: float = 0, token: str | None = None, host: str = HOST) -> dict[str, str]:
    tags = {HOST_TAG: host, PID_TAG: str(pid), HEARTBEAT_TAG: f"{time.time() - heartbeat_age_seconds:.0f}"}
    if token is not None:
        tags[OWNER_TAG] = token
    return tags


def token_of(pid: int) -> str:
    boot = owner_token().split("/")[1]
    return f"{HOST}/{boot}/{pid}/{ownership.process_start_ticks(pid)}"


@pytest.fixture
def other_process():
    """A live process that is not this one (stopped by its pid afterwards)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_live_owner_with_a_fresh_heartbeat_keeps_its_run(other_process):
    assert orphan_reason(tags_of(other_process, token=token_of(other_process)), WINDOW_SECONDS) is None
    assert orphan_reason(tags_of(12345, host="node-elsewhere"), WINDOW_SECONDS) is None
    assert orphan_reason(tags_of(os.getpid(), 10 * WINDOW_SECONDS, token=owner_token()), WINDOW_SECONDS) is None


def test_a_dead_owner_on_this_host_is_found_at_once():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    reason = orphan_reason(tags_of(process.pid), WINDOW_SECONDS)
    assert reason == f"its process {process.pid} on {HOST} ended without closing it"


def test_a_reused_pid_does_not_keep_a_dead_owners_run(other_process):
    # The run's owner died and its pid now belongs to another live process.
    reused = token_of(other_process).rsplit("/", 1)[0] + "/1"  # started at another time than that process
    reason = orphan_reason(tags_of(other_process, token=reused), WINDOW_SECONDS)
    assert reason and "the pid now belongs to another process" in reason
    # Without an owner token (a run from before tokens), the stale heartbeat still finds it.
    reason = orphan_reason(tags_of(other_process, heartbeat_age_seconds=2 * WINDOW_SECONDS), WINDOW_SECONDS)
    assert reason and "has been silent for 20 min" in reason


def test_a_stale_heartbeat_orphans_a_run_from_any_host(other_process):
    stale = 2 * WINDOW_SECONDS
    assert "silent" in orphan_reason(tags_of(12345, stale, host="node-elsewhere"), WINDOW_SECONDS)
    # A live owner whose heartbeat is that old stopped itself long ago (at half the window).
    assert "silent" in orphan_reason(tags_of(other_process, stale, token=token_of(other_process)), WINDOW_SECONDS)


def test_a_run_from_before_a_reboot_is_orphaned(other_process):
    rebooted = token_of(other_process).split("/")
    rebooted[1] = "00000000"
    assert "rebooted" in orphan_reason(tags_of(other_process, token="/".join(rebooted)), WINDOW_SECONDS)


def _claim_in_child(uri: str, run_id: str, barrier, results) -> None:
    barrier.wait()
    try:
        claim(Store(uri), run_id, WINDOW_SECONDS)
        results.put(("won", owner_token()))
    except ClaimLost as lost:
        results.put(("lost", str(lost)))


@pytest.fixture(scope="module")
def store_db(tmp_path_factory):
    """One SQLite store for the module (creating its schema takes MLflow seconds)."""
    db = tmp_path_factory.mktemp("ownership") / "mlflow.db"
    Store(f"sqlite:///{db}").get_or_create_experiment("e", None)
    return db


def _orphan(db) -> tuple[str, Store, str]:
    """A RUNNING run whose owner on another host has been silent for two orphan windows."""
    uri = f"sqlite:///{db}"
    runs = Store(uri)
    dead_owner = tags_of(12345, 2 * WINDOW_SECONDS, host="node-elsewhere")
    return uri, runs, runs.create_run(runs.experiment_id("e"), "orphan", dead_owner)


@pytest.mark.slow  # three processes import MLflow
def test_of_launchers_racing_to_take_over_one_orphan_exactly_one_wins(store_db):
    uri, runs, run_id = _orphan(store_db)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    children = [context.Process(target=_claim_in_child, args=(uri, run_id, barrier, results)) for _ in range(3)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    winners = [detail for outcome, detail in outcomes if outcome == "won"]
    assert len(winners) == 1, outcomes
    run = runs.get_run(run_id)
    assert run.data.params["owner.1"] == run.data.tags[OWNER_TAG] == winners[0]
    assert run.data.tags[GENERATION_TAG] == "1"


def test_a_claimed_run_is_not_claimed_again_while_its_owner_lives(store_db):
    uri, runs, run_id = _orphan(store_db)
    claim(runs, run_id, WINDOW_SECONDS)
    runs.set_tags(run_id, {OWNER_TAG: token_of(os.getppid()), HOST_TAG: HOST, PID_TAG: str(os.getppid())})
    with pytest.raises(ClaimLost, match="live owner"):
        claim(runs, run_id, WINDOW_SECONDS)
    runs.end_run(run_id, "FINISHED")
    with pytest.raises(ClaimLost, match="is FINISHED"):
        claim(runs, run_id, WINDOW_SECONDS)


def test_a_heartbeat_that_cannot_write_gives_up_the_run_before_the_orphan_window(store_db):
    uri, runs, run_id = _orphan(store_db)
    claim(runs, run_id, WINDOW_SECONDS)
    lost = threading.Event()
    heartbeat = Heartbeat(runs, run_id, stale_after_seconds=4.0, on_lost=lost.set)
    heartbeat.start()
    lock = sqlite3.connect(store_db, timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # every read and write of the store now fails: "database is locked"
        assert lost.wait(timeout=30), "the heartbeat never gave up"
    finally:
        lock.rollback()
        lock.close()
        heartbeat.stop()
    assert not heartbeat.taken_over
    silent_seconds = float(heartbeat.lost_reason.split("heartbeat failed for ")[1].split(" s")[0])
    assert 2.0 <= silent_seconds < 4.0, heartbeat.lost_reason  # half the window passed, the whole one did not


def test_a_heartbeat_stops_at_once_when_another_process_owns_the_run(store_db):
    uri, runs, run_id = _orphan(store_db)
    claim(runs, run_id, WINDOW_SECONDS)
    lost = threading.Event()
    with Heartbeat(runs, run_id, stale_after_seconds=1.2, on_lost=lost.set) as heartbeat:
        runs.set_tags(run_id, {OWNER_TAG: "node-elsewhere/boot/4242/99"})
        assert lost.wait(timeout=30)
    assert heartbeat.taken_over and "taken over by node-elsewhere/boot/4242/99" in heartbeat.lost_reason
