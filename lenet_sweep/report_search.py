"""The report's search section: one block per Optuna study whose trials are among the selected runs.

A trial's run carries the tags ``study``, ``trial_number`` and ``trial_state``
(``lenet_sweep.trial``); the study itself is read back from its Optuna storage,
which the runs do not record (the URL may hold a password). The best trial, the
optimisation history and the parameter importances come from Optuna's own
functions (``optuna.visualization.matplotlib``, ``optuna.importance``).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
from optuna.visualization.matplotlib import plot_optimization_history

from lenet_sweep.study import RUN_ID_ATTR, load_existing_study, open_storage, resolve_storage_url
from lenet_sweep.trial import STORAGE_ENV, STUDY_TAG, TRIAL_NUMBER_TAG, TRIAL_STATE_TAG
from lenet_sweep.uris import redact


def storage_url(configured: str | None, start_dir: Path) -> str:
    """The storage to read studies from: ``configured``; else the sweep's own (``$LENET_SWEEP_OPTUNA_STORAGE``,
    set in a launching process); else the sweeper's default ``sqlite:///<start dir>/outputs/optuna.db``."""
    return resolve_storage_url(configured or os.environ.get(STORAGE_ENV), start_dir)


def studies_of(runs) -> dict[str, Counter]:
    """Each study among ``runs`` (trial runs only) with its runs' ``trial_state`` counts, in the runs' order."""
    studies: dict[str, Counter] = {}
    for run in runs:
        tags = run.data.tags
        if STUDY_TAG in tags and TRIAL_NUMBER_TAG in tags:
            studies.setdefault(tags[STUDY_TAG], Counter())[tags.get(TRIAL_STATE_TAG, "RUNNING")] += 1
    return studies


def figure_name(study_name: str) -> str:
    """A file name for the study's history figure: readable, and unique to the name (names hold ``·`` and ``=``)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name).strip("_")[:60]
    return f"search_{readable}_{hashlib.sha256(study_name.encode()).hexdigest()[:8]}.png"


def search_section(runs, storage: str, out_dir: Path) -> tuple[str, list[Path]]:
    """The search section (markdown, '' when no selected run is a trial) and the figures it wrote into ``out_dir``."""
    studies = studies_of(runs)
    if not studies:
        return "", []
    opened = open_storage(storage, create=False)
    blocks, files = [], []
    for name, states in studies.items():
        study = load_existing_study(name, opened)
        if study is None:
            blocks.append(
                f"### Study `{name}`\n\nNot found in Optuna storage `{redact(storage)}`: "
                "pass `--optuna-storage` with the sweep's `hydra.sweeper.storage`."
            )
            continue
        block, figure = study_block(study, states, out_dir)
        blocks.append(block)
        files += [figure] if figure else []
    return "\n\n".join([f"## Search\n\nStudies in Optuna storage `{redact(storage)}`.", *blocks]), files


def study_block(study: optuna.Study, run_states: Counter, out_dir: Path) -> tuple[str, Path | None]:
    """One study's markdown: trial counts, best trial and its run, history figure, importances."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    direction = study.direction.name.lower()
    metric = study.user_attrs.get("metric", "value")
    lines = [
        f"### Study `{study.study_name}`",
        "",
        f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); {direction} {metric} "
        f"({study.user_attrs.get('objective', 'best')} epoch). Selected runs of this study by `trial_state`: "
        + ", ".join(f"{n} {s}" for s, n in sorted(run_states.items()))
        + ".",
        "",
    ]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return "\n".join([*lines, "No trial completed: no best trial, history or importances."]), None
    best = study.best_trial
    params = ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`" for k, v in best.params.items())
    lines += [
        f"**Best trial {best.number}**: {metric} {best.value:.4f}; {params or 'no parameters'}; "
        f"MLflow run `{best.user_attrs.get(RUN_ID_ATTR, '(not recorded)')}`.",
        "",
    ]
    figure = out_dir / figure_name(study.study_name)
    write_history(study, figure)
    lines += [f"![optimisation history of {study.study_name}]({figure.name})", "", importances_text(study)]
    return "\n".join(lines), figure


def write_history(study: optuna.Study, path: Path) -> None:
    """Optuna's optimisation-history plot of ``study``, saved as ``path``."""
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot_optimization_history(study, target_name=study.user_attrs.get("metric", "Objective Value"))
    path.parent.mkdir(parents=True, exist_ok=True)
    axes.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(axes.figure)


def importances_text(study: optuna.Study) -> str:
    """Optuna's parameter importances (its default evaluator) as a markdown list, or why there are none."""
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as error:  # e.g. too few completed trials, or no parameter varies
        return f"Parameter importances: not available ({' '.join(str(error).split())})."
    if not importances:
        return "Parameter importances: none (no parameter was searched)."
    rows: Sequence[str] = [f"- `{key}`: {value:.3f}" for key, value in importances.items()]
    return "\n".join(["Parameter importances (Optuna's default evaluator, normalised to sum 1):", *rows])
