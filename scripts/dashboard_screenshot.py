#!/usr/bin/env python3
"""Screenshot a study in optuna-dashboard (the README's docs/optuna-dashboard.png).

Starts ``optuna-dashboard`` over an Optuna storage on a free loopback port, opens the study's page
(its optimisation history and trials) in headless Chromium, checks that the page names the study,
saves a PNG, and stops the dashboard by its process group.

    .venv/bin/python -m scripts.dashboard_screenshot     # ./outputs/optuna.db, its newest study
    .venv/bin/python -m scripts.dashboard_screenshot --storage sqlite:////tmp/s/outputs/optuna.db --study NAME

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``search`` extra (optuna-dashboard).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import optuna

from scripts.ui_screenshot import SCREENSHOT_FLAGS
from tests.helpers.services import find_chromium, free_port, run_chromium, start_optuna_dashboard, stop_process_group


def study_id(storage_url: str, name: str | None) -> tuple[int, str]:
    """The dashboard's id of study ``name`` (None: the newest study) and its name; exits naming what is missing."""
    storage = optuna.storages.get_storage(storage_url)
    studies = storage.get_all_studies()
    if not studies:
        sys.exit(f"no study in {storage_url}")
    chosen = [s for s in studies if s.study_name == name] if name else [max(studies, key=lambda s: s._study_id)]
    if not chosen:
        sys.exit(f"no study '{name}' in {storage_url}: {', '.join(s.study_name for s in studies)}")
    return chosen[0]._study_id, chosen[0].study_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=f"sqlite:///{Path.cwd() / 'outputs' / 'optuna.db'}")
    parser.add_argument("--study", help="study name (default: the newest)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "optuna-dashboard.png"
    )
    parser.add_argument("--budget-ms", type=int, default=20_000, help="virtual time Chromium gives the page")
    args = parser.parse_args()
    if find_chromium() is None:
        sys.exit("chromium not found: apt-get install chromium")
    number, name = study_id(args.storage, args.study)
    with tempfile.TemporaryDirectory(prefix="dashboard-screenshot-") as tmp:
        tmp = Path(tmp)
        server, base = start_optuna_dashboard(args.storage, free_port(), tmp / "dashboard.log")
        try:
            url = f"{base}/dashboard/studies/{number}"
            browser = [*SCREENSHOT_FLAGS, f"--virtual-time-budget={args.budget_ms}"]
            dom = run_chromium([*browser, "--dump-dom", url], tmp / "profile-dom", 120)
            if name not in dom:
                sys.exit(f"{url} did not render study '{name}'; try --budget-ms 40000")
            raw = tmp / "raw.png"
            run_chromium([*browser, f"--screenshot={raw}", url], tmp / "profile-shot", 120)
        finally:
            stop_process_group(server)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) of study '{name}'")


if __name__ == "__main__":
    main()
