#!/usr/bin/env python3
"""Screenshot MLflow's comparison of runs' metric curves (the README's docs/mlflow-compare.png).

Starts ``mlflow ui`` over a tracking store on a free loopback port, opens the comparison page of one
metric for the runs (their curves on one chart, with a latest/min/max table) in headless Chromium,
saves a PNG, and stops the server by its process group.

    .venv/bin/python -m scripts.ui_screenshot       # ./outputs/mlflow.db, every finished job run
    .venv/bin/python -m scripts.ui_screenshot --store sqlite:////tmp/s/outputs/mlflow.db \
        --runs 'lenet·none·sgd·s0' 'mlp·none·sgd·s0' --out docs/mlflow-compare.png

With ``--group-by-tag config_group`` it shows the experiment's Chart view instead, runs grouped by
that tag: one mean curve per configuration with a min-max band over its seeds (the README's
docs/mlflow-seeds-grouped.png, from ``make writeup``'s store). The view is handed to the UI as MLflow's
own "Share" button does: a ``mlflow.sharedViewState.<key>`` experiment tag and ``viewStateShareKey=<key>``.

The README's pictures are of ``make sweep``'s store (the grid: six runs, 15 epochs) and of ``make
writeup``'s (four experiments x 3 seeds). Needs Debian's ``chromium`` (``apt-get install chromium``)
and Pillow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from tests.helpers.services import (
    find_chromium,
    free_port,
    run_chromium,
    start_mlflow,
    stop_process_group,
)

SCREENSHOT_FLAGS = [
    "--hide-scrollbars",
    "--window-size=1400,900",
    # Paint every layer (the table's sticky header included) before the screenshot is taken.
    "--run-all-compositor-stages-before-draw",
    # Report a mouse: headless has none, so plotly would pin its toolbar over the curves.
    "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4",
]
# MLflow >= 3.x opens its "Assistant" side panel on first load when the page's host is localhost/127.0.0.1.
# Chromium reaches the loopback server under another name instead, so the panel never shows.
ALIAS = "mlflow-ui"


def pick_runs(store: str, experiment: str, wanted: list[str]) -> tuple[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"no experiment {experiment!r} in {store}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    if wanted:
        by_key = {**{r.info.run_name: r for r in runs}, **{r.info.run_id: r for r in runs}}
        missing = [w for w in wanted if w not in by_key]
        if missing:
            sys.exit(f"runs not found in {experiment!r}: {missing}")
        return exp.experiment_id, [by_key[w] for w in wanted]
    children = [r for r in runs if r.data.tags.get("sweep") != "true" and r.info.status == "FINISHED"]
    if len(children) < 2:
        sys.exit(f"need two finished runs in {experiment!r}, found {len(children)}")
    return exp.experiment_id, sorted(children, key=lambda r: r.info.run_name)


def compare_url(base: str, experiment_id: str, run_ids: list[str], metric: str) -> str:
    """The metric page reached from "Compare" -> a metric: every run's curve of ``metric`` against step."""
    query = {
        "runs": json.dumps(run_ids),
        "metric": json.dumps(metric),
        "experiments": json.dumps([experiment_id]),
        "plot_metric_keys": json.dumps([metric]),
        "x_axis": "step",
        "show_point": "true",
        "line_smoothness": "0",
    }
    return f"{base}/#/metric?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


SHARED_VIEW_KEY = "lenet-sweep-grouped-by-tag"


def grouped_chart_url(
    base: str, store: str, experiment_id: str, tag: str, metric: str, y_range: list[float] | None
) -> str:
    """The experiment's Chart view: ``metric`` against step, runs grouped by ``tag`` (mean, min-max band).

    Saves the view as a shared view state on the experiment (a tag), the way the UI's Share button does,
    and returns the address that opens it. The search keeps the runs that carry ``tag``; the UI still
    lists a sweep's parent run apart, under "Additional runs", with no curve.
    """
    from mlflow.tracking import MlflowClient

    section = "lenet-sweep-section"
    y_min, y_max = y_range or (None, None)
    chart = {
        "type": "LINE",
        "uuid": "lenet-sweep-chart",
        "metricSectionId": section,
        "metricKey": metric,
        "selectedMetricKeys": [metric],
        "xAxisKey": "step",
        "scaleType": "linear",
        "lineSmoothness": 0,
        "range": {"yMin": y_min, "yMax": y_max},
        "deleted": False,
        "isGenerated": False,
    }
    view = {
        "searchFilter": f"tags.{tag} != ''",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": tag}]},
        "useGroupedValuesInCharts": True,
        "runsHiddenMode": "SHOW_ALL",
        "compareRunSections": [
            {
                "uuid": section,
                "name": "Model metrics",
                "display": True,
                "isReordered": False,
                "columns": 1,
                "cardHeight": 520,
            }
        ],
        "compareRunCharts": [chart],
        "chartsSearchFilter": metric,  # the UI adds a chart for every other metric too
    }
    MlflowClient(store).set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{SHARED_VIEW_KEY}", json.dumps(view))
    return f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART&viewStateShareKey={SHARED_VIEW_KEY}"


def trim(src: Path, dst: Path, pad: int = 40) -> tuple[int, int]:
    """Cut the empty white band under the content; save optimised. Returns the final size."""
    from PIL import Image, ImageChops

    image = Image.open(src).convert("RGB")
    width, height = image.size
    pane = image.crop((width // 6, 0, width, height))  # right of the sidebar, whose gradient is not white
    box = ImageChops.difference(pane, Image.new("RGB", pane.size, "white")).point(lambda v: 255 if v > 16 else 0)
    rows = [y for y in range(pane.height) if box.crop((0, y, pane.width, y + 1)).getbbox()]
    # The last non-white row is the content card's border at the very bottom: look above it.
    content = [y for y in rows if y < height - 40]
    bottom = min(height, (content[-1] if content else height) + pad)
    image.crop((0, 0, width, bottom)).save(dst, optimize=True)
    return width, bottom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'outputs' / 'mlflow.db'}")
    parser.add_argument("--experiment", default="lenet_sweep")
    parser.add_argument("--runs", nargs="+", metavar="NAME_OR_ID", default=[])
    parser.add_argument("--metric", default="test_acc")
    parser.add_argument("--group-by-tag", metavar="TAG", help="the Chart view with runs grouped by TAG")
    parser.add_argument("--y-range", nargs=2, type=float, metavar=("LOW", "HIGH"), help="with --group-by-tag")
    parser.add_argument("--out", type=Path, help="default: docs/mlflow-compare.png, or mlflow-seeds-grouped.png")
    parser.add_argument("--budget-ms", type=int, default=20_000, help="virtual time Chromium gives the page")
    parser.add_argument("--no-trim", action="store_true", help="keep the full 1400x900 window")
    args = parser.parse_args()

    docs = Path(__file__).resolve().parents[1] / "docs"
    args.out = args.out or docs / ("mlflow-seeds-grouped.png" if args.group_by_tag else "mlflow-compare.png")
    if find_chromium() is None:
        sys.exit("chromium not found: apt-get install chromium")
    experiment_id, runs = pick_runs(args.store, args.experiment, args.runs)
    names = [r.info.run_name for r in runs]
    print(f"runs: {names}", flush=True)

    port = free_port()
    base = f"http://{ALIAS}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with tempfile.TemporaryDirectory(prefix="ui-screenshot-") as tmp:
        tmp = Path(tmp)
        server, _ = start_mlflow(
            "ui",
            args.store,
            port,
            tmp / "server.log",
            env=env,
            extra_args=["--allowed-hosts", f"{ALIAS}:{port},127.0.0.1:{port}", "--cors-allowed-origins", base],
        )
        try:
            if args.group_by_tag:
                url = grouped_chart_url(base, args.store, experiment_id, args.group_by_tag, args.metric, args.y_range)
                # A group is labelled with its tag value; the page must show every group.
                names = sorted({r.data.tags[args.group_by_tag] for r in runs if args.group_by_tag in r.data.tags})
            else:
                url = compare_url(base, experiment_id, [r.info.run_id for r in runs], args.metric)
            print(f"url: {url}", flush=True)
            browser = [
                *SCREENSHOT_FLAGS,
                f"--host-resolver-rules=MAP {ALIAS} 127.0.0.1",
                f"--virtual-time-budget={args.budget_ms}",
            ]
            dom = run_chromium(browser + ["--dump-dom", url], tmp / "profile-dom", 120)
            missing = [n for n in names if n not in dom]
            if missing or "main-svg" not in dom:
                sys.exit(f"page did not render the chart (missing {missing or 'plot'}); try --budget-ms 40000")
            raw = tmp / "raw.png"
            run_chromium(browser + [f"--screenshot={raw}", url], tmp / "profile-shot", 120)
        finally:
            stop_process_group(server)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        size = None
        if args.no_trim:
            shutil.copyfile(raw, args.out)
        else:
            size = trim(raw, args.out)
    kib = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({kib:.0f} KiB{f', {size[0]}x{size[1]}' if size else ''})")


if __name__ == "__main__":
    main()
