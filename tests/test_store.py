"""The store module: its one URI parser, and searches that return every run, however many."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from lenet_sweep import store
from lenet_sweep.store import Store, TrackingError


def test_one_parser_for_every_kind_of_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "outputs" / "mlflow.db"
    assert store.sqlite_path(f"sqlite:///{db}") == db
    assert store.sqlite_path("http://127.0.0.1:5000") is None
    assert store.is_server("https://mlflow.lab.example") and not store.is_server(f"sqlite:///{db}")
    assert store.default_artifact_location(f"sqlite:///{db}") == (db.parent / "mlartifacts").as_uri()
    assert store.default_artifact_location("http://127.0.0.1:5000") is None
    assert store.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{db}"
    assert store.resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert not store.store_exists(f"sqlite:///{db}") and store.store_exists("http://127.0.0.1:5000")
    with pytest.raises(TrackingError, match="file stores are not supported"):
        store.check_reachable(str(tmp_path / "mlruns"))
    with pytest.raises(TrackingError, match=f"MLflow store sqlite:///{db} does not exist"):
        Store.open_existing(f"sqlite:///{db}")


def _copy_runs(db: Path, template_run_id: str, copies: int) -> None:
    """``copies`` more runs like ``template_run_id``, inserted straight into the store's tables (MLflow takes
    minutes to create ten thousand runs one request at a time)."""
    with sqlite3.connect(db) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(runs)")]
        template = dict(
            zip(columns, connection.execute("SELECT * FROM runs WHERE run_uuid = ?", (template_run_id,)).fetchone())
        )
        rows = []
        for i in range(copies):
            run_id = uuid.uuid4().hex
            rows.append(
                {**template, "run_uuid": run_id, "name": f"copy-{i}", "start_time": template["start_time"] + i + 1}
            )
        placeholders = ", ".join("?" for _ in columns)
        connection.executemany(
            f"INSERT INTO runs ({', '.join(columns)}) VALUES ({placeholders})", [[r[c] for c in columns] for r in rows]
        )
        connection.executemany(
            "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
            [(store.FINGERPRINT_TAG, "abc", r["run_uuid"]) for r in rows],
        )


def test_a_search_over_more_than_ten_thousand_runs_is_complete(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = Store(uri)
    experiment_id = runs.get_or_create_experiment("many", None)
    first = runs.create_run(experiment_id, "first", {store.FINGERPRINT_TAG: "abc"})
    runs.end_run(first, "FINISHED")
    _copy_runs(tmp_path / "mlflow.db", first, 10_000)

    every = runs.search_runs(experiment_id)
    assert len(every) == 10_001 and len({r.info.run_id for r in every}) == 10_001
    assert len(runs.runs_with_fingerprint(experiment_id, "abc", ["FINISHED"])) == 10_001
    assert len(runs.search_runs(experiment_id, limit=1500)) == 1500  # an explicit limit, and only then fewer


def test_a_param_is_logged_once_and_never_changed(tmp_path):
    runs = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = runs.create_run(runs.get_or_create_experiment("e", None), "r", {})
    assert runs.log_param_once(run_id, "owner.1", "first")
    assert runs.log_param_once(run_id, "owner.1", "first"), "the same value again is no change"
    assert not runs.log_param_once(run_id, "owner.1", "second")
    assert runs.get_run(run_id).data.params["owner.1"] == "first"
