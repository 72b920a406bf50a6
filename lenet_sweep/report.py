"""Compare configurations across seeds from the MLflow store: ``python -m lenet_sweep.report``.

Reads an experiment's job runs (FINISHED only unless ``--include-failed``; a sweep's
parent run is never a row), groups them into configurations, and writes into
``--out`` (default ``outputs/report/``) ``table.md``/``table.csv`` (metrics at one
epoch, mean and sample std over seeds), learning-curve PNGs and ``report.md``, which
adds per-layer parameter tables and a findings paragraph. The markdown table also
goes to stdout. Input problems (store, experiment, no matching runs, a bad option)
print one ``error:`` line on stderr and exit 2.

This module gathers and aggregates; ``report_page`` writes the table, the findings (Welch's
test) and the page; ``figures`` draws.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lenet_sweep import figures, identity, store
from lenet_sweep.report_page import (
    DATASET_KEY,
    config_label,
    findings_by_dataset,
    markdown_table,
    write_tables_and_page,
)
from lenet_sweep.report_search import search_section, storage_url
from lenet_sweep.report_verdicts import verdict_section
from lenet_sweep.store import TUNED_FROM_TAG, Store, StoreRefused
from lenet_sweep.study import StudyError
from lenet_sweep.trial import TRIAL_NUMBER_TAG

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
ALL_METRICS = METRICS + ("epoch_seconds",)
SECTION_ORDER = ("model", "aug", "optimizer", "train", "data", "device")
NOT_CONFIG = ("seed", "n_params")
LABEL_KEYS = ("model.name", "aug.name")  # the columns shown when no config param varies
FAILED_STATUSES = ("FAILED", "KILLED")
DEFAULT_OUT = Path("outputs") / "report"


class ReportError(RuntimeError):
    """Nothing to report (no experiment, no matching runs, a bad option); the message says which."""


@dataclass
class Report:
    """What ``build_report`` made: the numeric table (one row per configuration) and the files written."""

    table: pd.DataFrame
    group_by: list[str]
    markdown_table: str
    findings: str
    out_dir: Path
    files: list[Path]
    mixed: list[str]  # config params that differ inside a row (an explicit --group-by left them out)


# --- gathering -------------------------------------------------------------------------


def select_runs(runs_store: Store, experiment_id: str, filter_string: str | None, include_failed: bool):
    """The experiment's job runs matching the filter: FINISHED, plus FAILED/KILLED with ``include_failed``.

    Returns ``(runs, left_out)``: ``left_out`` counts the FAILED/KILLED runs not selected.
    """
    try:
        runs = runs_store.search_runs(experiment_id, filter_string or "")
    except StoreRefused as error:
        if not filter_string or error.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise ReportError(f'--filter "{filter_string}": {error.message.splitlines()[0]}') from None
    jobs = [r for r in runs if r.data.tags.get("sweep") != "true"]
    selected = [r for r in jobs if r.info.status in ("FINISHED",) + (FAILED_STATUSES if include_failed else ())]
    left_out = 0 if include_failed else sum(r.info.status in FAILED_STATUSES for r in jobs)
    if not selected:
        name = runs_store.experiment_name(experiment_id)
        where = f' matching filter "{filter_string}"' if filter_string else ""
        hint = f" ({left_out} FAILED/KILLED; add --include-failed to report them)" if left_out else ""
        raise ReportError(f"no {'' if include_failed else 'FINISHED '}runs in experiment '{name}'{where}{hint}")
    return selected, left_out


def load_histories(runs_store: Store, runs) -> pd.DataFrame:
    """One row per (run, epoch) with every per-epoch metric; a step logged twice keeps its latest value."""
    rows = [
        (run.info.run_id, m.step, key, m.value, m.timestamp)
        for run in runs
        for key in ALL_METRICS
        for m in runs_store.metric_history(run.info.run_id, key)
    ]
    frame = pd.DataFrame(rows, columns=["run_id", "epoch", "metric", "value", "timestamp"])
    frame = frame.sort_values("timestamp").drop_duplicates(["run_id", "epoch", "metric"], keep="last")
    wide = frame.pivot(index=["run_id", "epoch"], columns="metric", values="value").reset_index()
    return wide.reindex(columns=["run_id", "epoch", *ALL_METRICS])


# --- grouping and aggregation ----------------------------------------------------------


def is_bookkeeping(key: str) -> bool:
    """Params that say where or how a run ran, not what it computed (``identity.NOT_COMPUTED``)."""
    return not identity.computes(key)


def _readability(key: str) -> tuple:
    section = key.split(".")[0]
    rank = SECTION_ORDER.index(section) if section in SECTION_ORDER else len(SECTION_ORDER)
    return (not key.endswith(".name"), key.count("."), rank, key)


def splitting_keys(params: pd.DataFrame, keys: Sequence[str] = ()) -> list[str]:
    """Config params (not seed, not bookkeeping) that split the groups ``keys`` form, most readable first.

    Candidates are taken in order of readability (``*.name`` keys, shallow keys, config order)
    and kept only if they split a group the keys so far form, so ``model.arch`` and
    ``model.regularization.*`` disappear behind ``model.name`` when they vary along with it.
    """
    candidates = sorted(
        (k for k in params.columns if k not in NOT_CONFIG and not is_bookkeeping(k) and params[k].nunique() > 1),
        key=_readability,
    )
    kept, added = list(keys), []
    for key in (k for k in candidates if k not in keys):
        if params.groupby(kept + [key]).ngroups > (params.groupby(kept).ngroups if kept else 1):
            kept.append(key)
            added.append(key)
    return added


def default_group_by(params: pd.DataFrame) -> list[str]:
    """The default ``--group-by``: the config params that vary, minus seed, bookkeeping and redundant keys."""
    return splitting_keys(params)


def _n_params(values: pd.Series):
    distinct = sorted({int(float(v)) for v in values.dropna()})
    return distinct[0] if len(distinct) == 1 else "/".join(map(str, distinct)) or None


def aggregate(frame: pd.DataFrame, hist: pd.DataFrame, group_by: list[str], epoch: int | None):
    """The per-configuration table (best test accuracy first) and each configuration's mean/std curves.

    ``frame``: one row per run (index run_id) with params and ``status``; ``hist``: ``load_histories``.
    Row values are taken at ``epoch`` (``None``: each run's last logged epoch).
    """
    frame = frame.assign(label=[config_label(row, group_by) for _, row in frame.iterrows()])
    last = hist.dropna(subset=["test_acc"]).groupby("run_id")["epoch"].max()
    chosen = (last if epoch is None else pd.Series(epoch, index=frame.index)).rename("epoch")
    at = frame[["label"]].join(chosen).reset_index().merge(hist, on=["run_id", "epoch"], how="left").set_index("run_id")
    rows, curves = [], {}
    for label, members in frame.groupby("label", sort=False):
        values = at.loc[members.index]
        epochs = values["epoch"][values["test_acc"].notna()]
        row = {k: members[k].iloc[0] for k in group_by}
        row.update(
            label=label,
            n_params=_n_params(members["n_params"]),
            seeds=len(members),
            failed=int(members["status"].isin(FAILED_STATUSES).sum()),
            epoch=epochs.max(),
            epochs_differ=epochs.nunique() > 1,
        )
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = values[key].mean(), values[key].std(ddof=1)
        row["test_acc_n"] = int(values["test_acc"].count())
        runs_hist = hist[hist["run_id"].isin(members.index)]
        curve = runs_hist.groupby("epoch")[list(ALL_METRICS)].agg(["mean", "std"])
        curve.columns = [m if stat == "mean" else f"{m}_std" for m, stat in curve.columns]
        curve = curve.reset_index()
        best = curve.loc[curve["test_acc"].idxmax()] if curve["test_acc"].notna().any() else {}
        best_columns = {"best_test_acc": "test_acc", "best_test_acc_std": "test_acc_std", "best_epoch": "epoch"}
        for key, column in best_columns.items():
            row[key] = best.get(column, math.nan)
        row["epoch_seconds_mean"] = runs_hist["epoch_seconds"].mean()
        rows.append(row)
        curves[label] = curve
    table = pd.DataFrame(rows).sort_values("test_acc_mean", ascending=False, na_position="last", kind="stable")
    table[["epoch", "best_epoch"]] = table[["epoch", "best_epoch"]].astype("Int64")
    return table.reset_index(drop=True), curves


# --- the report ------------------------------------------------------------------------


def build_report(
    runs_store: Store,
    experiment_id: str,
    out_dir: Path,
    *,
    filter_string: str | None = None,
    group_by: list[str] | None = None,
    epoch: int | None = None,
    include_failed: bool = False,
    optuna_storage: str | None = None,
) -> Report:
    """Build the report of the experiment's runs matching ``filter_string`` into ``out_dir``.

    For a sweep's own jobs pass ``filter_string=run_ids_filter(ids)`` (skipped jobs included)
    or ``f"tags.mlflow.parentRunId = '{parent_id}'"``. ``group_by=None`` picks the keys
    (``default_group_by``); ``epoch=None`` takes each run's last logged epoch. Trials of Optuna studies
    get a search section from the studies in ``optuna_storage`` (``report_search.storage_url``).
    Raises ``ReportError`` when there is nothing to report.
    """
    selected, left_out = select_runs(runs_store, experiment_id, filter_string, include_failed)
    runs = compared_runs(selected)
    frame = pd.DataFrame([r.data.params for r in runs], index=[r.info.run_id for r in runs]).fillna("(unset)")
    frame.index.name = "run_id"
    unknown = [k for k in group_by or [] if k not in frame.columns]
    if unknown:
        raise ReportError(f"--group-by {','.join(unknown)}: not a param of the selected runs")
    keys = list(group_by) if group_by is not None else default_group_by(frame) or [k for k in LABEL_KEYS if k in frame]
    keys = dataset_first(keys)
    mixed = splitting_keys(frame, keys)
    frame["n_params"] = frame.get("n_params", pd.Series(None, index=frame.index)).replace("(unset)", None)
    frame["status"] = [r.info.status for r in runs]
    hist = load_histories(runs_store, runs)
    if epoch is not None and not (hist["epoch"] == epoch).any():
        span = f"{hist['epoch'].min()}–{hist['epoch'].max()}" if len(hist) else "none"
        raise ReportError(f"--epoch {epoch}: no selected run logged that epoch (epochs logged: {span})")
    table, curves = aggregate(frame, hist, keys, epoch)
    table = sort_by_dataset(table, keys)
    epochs = table["epoch"].dropna()
    if epoch is not None:
        at = f"epoch {epoch}"
    elif epochs.nunique() == 1 and not table["epochs_differ"].any():
        at = f"the last epoch ({epochs.iloc[0]})"
    else:
        at = "each run's last logged epoch (* where a configuration's runs differ)"
    text, table_md = findings_by_dataset(table, keys, at), markdown_table(table, keys, include_failed)
    verdicts = verdict_section(frame[frame["status"] == "FINISHED"], hist, keys, epoch)  # report_verdicts
    text += f"\n\n{verdicts}" if verdicts else ""
    where = f" matching `{filter_string}`" if filter_string else ""
    failed = int(table["failed"].sum())
    statuses = f"runs ({len(runs) - failed} FINISHED, {failed} FAILED/KILLED)" if include_failed else "FINISHED runs"
    excluded = f" ({left_out} FAILED/KILLED left out)" if left_out else ""
    summary = (
        f"{len(runs)} {statuses}{excluded}{tuned_note(runs, selected)} "
        f"of experiment `{runs_store.experiment_name(experiment_id)}`"
        f"{where} in `{store.redact(runs_store.uri)}`, grouped by {', '.join(f'`{k}`' for k in keys) or 'nothing'}; "
        f"values at {at}." + (f" Rows mix runs that differ in {', '.join(mixed)}." if mixed else "")
    )
    out_dir = Path(out_dir)
    written = figures.write_figures(out_dir, list(zip(table["label"], table["seeds"])), curves)
    files = [out_dir / name for name in [*written.values(), "overview_test_acc.png"]]
    search_md, search_files = search_section(selected, storage_url(optuna_storage, Path.cwd()), out_dir)
    files += search_files + write_tables_and_page(out_dir, table, table_md, summary, text, written, frame, search_md)
    return Report(table, keys, table_md, text, out_dir, files, mixed)


def compared_runs(selected):
    """The runs the table compares: of a tune-then-compare sweep (its compare runs tagged ``tuned_from`` and
    its trials, nothing else) the compare runs, its trials going to the search section; else every run."""
    tuned = [r for r in selected if TUNED_FROM_TAG in r.data.tags]
    trials = [r for r in selected if TRIAL_NUMBER_TAG in r.data.tags]
    return tuned if tuned and len(tuned) + len(trials) == len(selected) else selected


def tuned_note(runs, selected) -> str:
    """Says, where the table holds only the tuned runs, what it leaves to the search section."""
    if len(runs) == len(selected):
        return ""
    return f" (each study's best trial trained again, tagged `{TUNED_FROM_TAG}`; its trials are under Search)"


# --- several data sets ------------------------------------------------------------------


def dataset_first(keys: Sequence[str]) -> list[str]:
    """``keys`` with the data set first when it is one of them, so the table's rows group by data set."""
    return sorted(keys, key=lambda k: k != DATASET_KEY)


def sort_by_dataset(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The table's rows by data set (by name), best test accuracy first within each; unchanged without one."""
    if DATASET_KEY not in keys:
        return table
    return table.sort_values(DATASET_KEY, kind="stable").reset_index(drop=True)


def run_ids_filter(run_ids: Sequence[str]) -> str:
    """An MLflow filter selecting exactly these runs (e.g. a sweep's jobs, skipped ones included)."""
    return "attributes.run_id IN (" + ", ".join(f"'{i}'" for i in run_ids) + ")"


# --- command line ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other input error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _epoch(text: str) -> int | None:
    if text == "last":
        return None
    if not re.fullmatch(r"[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'last', not {text!r}")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; see ``python -m lenet_sweep.report --help``."""
    p = _Parser(
        prog="python -m lenet_sweep.report",
        description="Compare an experiment's configurations across seeds: table, learning curves, report.md.",
    )
    p.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/outputs/mlflow.db)"
    )
    p.add_argument("--experiment", default="lenet_sweep", help="experiment name (default: lenet_sweep)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: outputs/report/)")
    p.add_argument(
        "--group-by",
        help="comma-separated param keys (default: the config params that vary, "
        "minus seed, paths/bookkeeping and keys that vary along with another)",
    )
    p.add_argument("--filter", help="MLflow search filter, e.g. \"params.model.name = 'mlp'\"")
    p.add_argument("--epoch", type=_epoch, default=None, help="epoch whose values fill the table (default: last)")
    p.add_argument("--include-failed", action="store_true", help="also report FAILED and KILLED runs")
    p.add_argument(
        "--optuna-storage",
        help="Optuna storage of the studies whose trials are reported (default: $LENET_SWEEP_OPTUNA_STORAGE, "
        "else sqlite:///<cwd>/outputs/optuna.db)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the markdown table and write the report; 2 with one ``error:`` line on stderr on bad input."""
    args = parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = store.resolve_tracking_uri(args.tracking_uri, Path.cwd())
    group_by = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None
    try:
        runs_store = Store.open_existing(uri)
        experiment_id = runs_store.require_experiment(args.experiment)
        report = build_report(
            runs_store,
            experiment_id,
            args.out,
            filter_string=args.filter,
            group_by=group_by,
            epoch=args.epoch,
            include_failed=args.include_failed,
            optuna_storage=args.optuna_storage,
        )
    except (ReportError, store.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StudyError as error:  # --optuna-storage unusable; the URL may hold a password
        print(store.redact(f"error: --optuna-storage: {error}"), file=sys.stderr)
        return 2
    except StoreRefused as error:
        print(store.redact(f"error: MLflow store {uri}: {str(error.message).strip().splitlines()[0]}"), file=sys.stderr)
        return 2
    print(report.markdown_table)
    if report.mixed:
        print(f"note: rows mix runs that differ in {', '.join(report.mixed)}", file=sys.stderr)
    print(f"wrote {report.out_dir / 'report.md'} and {len(report.files) - 1} files beside it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
