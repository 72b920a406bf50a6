"""Checks on what a sweep logged: per-epoch metric steps and the parent run with its children."""

from __future__ import annotations

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds")


def steps(client, run_id, key="test_acc"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def assert_one_parent_with_children(every_run, n_children, skipped=0):
    """One FINISHED parent whose last launch finished ``n_children - skipped`` jobs and skipped ``skipped``."""
    parents = [r for r in every_run if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    counts = parents[0].data.metrics
    assert (counts["jobs_finished"], counts["jobs_skipped"]) == (n_children - skipped, skipped)
    children = [r for r in every_run if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == n_children
    return children
