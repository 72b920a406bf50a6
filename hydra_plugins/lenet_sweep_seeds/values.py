"""Per-seed metric values from the store: a run's final epoch, and the seeds a configuration already has."""

from __future__ import annotations

from collections.abc import Sequence

from lenet_sweep.store import Store


def final_value(store: Store, run_id: str, metric: str) -> float | None:
    """``metric`` at the run's last logged epoch (the latest value logged at that step); None if never logged."""
    history = store.metric_history(run_id, metric)
    if not history:
        return None
    return max(history, key=lambda m: (m.step, m.timestamp)).value


def finished_values(store: Store, experiment_id: str, fingerprints: Sequence[str], metric: str) -> list[float]:
    """The values of the first seeds (in order) that have a FINISHED run: the ones a sweep would reuse.

    ``fingerprints``: the configuration's fingerprint with seed 0, 1, ...; counting stops at the
    first seed without one, as the sweep would train that seed next.
    """
    values = []
    for fingerprint in fingerprints:
        runs = store.runs_with_fingerprint(experiment_id, fingerprint, ["FINISHED"])
        value = final_value(store, runs[0].info.run_id, metric) if runs else None
        if value is None:
            break
        values.append(value)
    return values
