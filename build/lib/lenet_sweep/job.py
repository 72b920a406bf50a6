"""One sweep job: typed config in, one MLflow run out.

Order matters: everything that can be wrong with the input (config ranges, the
tracking store, the data) is checked before a run is created or a batch is
trained, so bad input never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from lenet_sweep import tracking
from lenet_sweep.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from lenet_sweep.config import Config
from lenet_sweep.data import load_mnist, to_model_input
from lenet_sweep.models import build_model, count_parameters, format_parameter_table
from lenet_sweep.train import DeviceData, EpochMetrics, fit, make_optimizer

log = logging.getLogger(__name__)
STATUS_FILE = "job_status.json"
PARENT_RUN_FILE = "mlflow_parent_run.json"
RESUMABLE = ("RUNNING", "FAILED", "KILLED")


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, preemption, a launcher shutting down): the run ends KILLED."""


@dataclass(frozen=True)
class JobContext:
    """Where the job runs, from Hydra's runtime config, as plain values."""

    start_dir: Path
    output_dir: Path
    overrides: tuple[str, ...]  # the job's command-line overrides, sweep values resolved
    sweep_dir: Optional[Path] = None
    job_num: Optional[int] = None
    parallel_jobs: int = 1


@dataclass
class JobResult:
    status: str  # FINISHED, FAILED, KILLED or SKIPPED
    run_name: str
    run_id: Optional[str] = None
    reason: Optional[str] = None
    test_acc: Optional[float] = None

    def write(self, directory: Path) -> None:
        (directory / STATUS_FILE).write_text(json.dumps(asdict(self)))


# Overrides that say where or how a job runs rather than what it computes (the fingerprint's
# exclusions, plus what the name shows anyway or does not change the numbers); run names leave them out.
NAME_EXCLUDED_PREFIXES = (*tracking.FINGERPRINT_EXCLUDED, "hydra.", "data.format", "train.compile", "device", "seed")


def run_name(cfg: Config, overrides: tuple[str, ...] = ()) -> str:
    """A name a person can read in the MLflow UI, e.g. ``lenet_reg·flip·sgd·s0``.

    Overridden settings that change what is computed are appended by their last
    key, so an lr sweep's runs read ``lenet·none·sgd·s0·lr=0.1``; config group
    choices (``model=mlp``) already show in the first parts.
    """
    model = cfg.model.name
    if cfg.model.regularization.name != "none" and cfg.model.name == cfg.model.arch:
        model += f"+{cfg.model.regularization.name}"
    parts = [model, cfg.aug.name, cfg.optimizer.name, f"s{cfg.seed}"]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if "." in key and not key.startswith(NAME_EXCLUDED_PREFIXES):
            parts.append(f"{key.rsplit('.', 1)[1]}={value}")
    return "·".join(parts)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but no CUDA device is available")
    return torch.device(requested)


def pick_threads(requested: int, parallel_jobs: int) -> int:
    """Torch threads per job so that jobs x threads never exceeds the cores.

    Under SLURM the job's allocation decides; otherwise the cores are shared
    evenly among the launcher's parallel jobs.
    """
    if requested:
        return requested
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // max(1, parallel_jobs))


def read_parent_run_id(sweep_dir: Optional[Path]) -> Optional[str]:
    """The sweep's parent run, written into the sweep directory when the multirun started."""
    if sweep_dir is None or not (sweep_dir / PARENT_RUN_FILE).is_file():
        return None
    return json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"]


def _raise_terminated(signum, frame):
    raise Terminated(f"received signal {signum}")


def _progress_factory(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    def factory(epoch: int, total: int):
        bar = tqdm(total=total, desc=f"Epoch {epoch}", unit="img", leave=False)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return update

    return factory


def _load_device_data(cfg: Config, start_dir: Path, device: torch.device) -> DeviceData:
    def path(p: Optional[str]) -> Optional[str]:
        return None if p is None else str((start_dir / p).resolve())

    mnist = load_mnist(
        cfg.data.format,
        path(cfg.data.root),
        cfg.data.download,
        path(cfg.data.train_dir),
        path(cfg.data.test_dir),
        cfg.data.train_limit,
        cfg.data.test_limit,
        cfg.data.subset_seed,
    )
    return DeviceData(
        to_model_input(mnist.train.images, device),
        mnist.train.labels.to(device),
        to_model_input(mnist.test.images, device),
        mnist.test.labels.to(device),
    )


def _close_orphans(client, experiment_id: str) -> None:
    for run_id in tracking.close_orphaned_runs(client, experiment_id):
        log.warning("run %s was left RUNNING by a process that is gone; marked KILLED", run_id)


def _find_resumable(client, experiment_id: str, fingerprint: str):
    for run in tracking.find_runs(client, experiment_id, fingerprint, RESUMABLE):
        checkpoint = run.data.tags.get(tracking.CHECKPOINT_TAG)
        if checkpoint and Path(checkpoint).is_file():
            return run, Path(checkpoint)
    return None, None


def run_job(cfg: Config, flat_config: dict[str, Any], ctx: JobContext) -> JobResult:
    """Train one configuration into one MLflow run; never leaves the run RUNNING on an exception.

    Raises ``ConfigError``/``DataError``/``TrackingError`` before any run exists.
    """
    name = run_name(cfg, ctx.overrides)
    tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri, ctx.start_dir)
    tracking.check_reachable(tracking_uri)
    client = tracking.MlflowClient(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(
        client, cfg.mlflow.experiment, tracking.default_artifact_location(tracking_uri)
    )
    fingerprint = tracking.config_fingerprint(flat_config)
    if ctx.sweep_dir is None:  # in a multirun the launching process did this before any job started
        _close_orphans(client, experiment_id)
    if cfg.sweep.skip_finished:
        finished = tracking.find_runs(client, experiment_id, fingerprint, ["FINISHED"])
        if finished:
            log.info("skip %s: already FINISHED as run %s", name, finished[0].info.run_id)
            return JobResult("SKIPPED", name, finished[0].info.run_id)

    torch.set_num_threads(pick_threads(cfg.train.threads, ctx.parallel_jobs))
    device = pick_device(cfg.device)
    data = _load_device_data(cfg, ctx.start_dir, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.arch, cfg.model.regularization.dropout, cfg.model.regularization.batchnorm).to(device)
    optimizer = make_optimizer(
        model, cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    n_params = count_parameters(model)
    trained_model = torch.compile(model) if cfg.train.compile else model
    log.info("%s: %s, %d trainable parameters on %s\n%s", name, cfg.model.arch, n_params, device, format_parameter_table(model))

    resumed_run, checkpoint_path = (None, None)
    if cfg.sweep.resume:
        resumed_run, checkpoint_path = _find_resumable(client, experiment_id, fingerprint)
    start_epoch, history = 1, []
    if resumed_run is not None:
        run_id = resumed_run.info.run_id
        last_epoch, history = load_checkpoint(checkpoint_path, model, optimizer, generator)
        start_epoch = last_epoch + 1
        client.update_run(run_id, status="RUNNING")
        tracking.set_tags(client, run_id, tracking.owner_tags())
        if tracking.FAILURE_TAG in resumed_run.data.tags:  # that failure is being repaired
            client.delete_tag(run_id, tracking.FAILURE_TAG)
        _log_missing_epochs(client, run_id, history)
        log.info("resume %s: run %s from epoch %d (%s)", name, run_id, start_epoch, checkpoint_path)
    else:
        checkpoint_path = ctx.output_dir / CHECKPOINT_NAME
        tags = tracking.tags_for_job(
            " ".join(ctx.overrides), str(ctx.sweep_dir) if ctx.sweep_dir else None, ctx.job_num,
            tracking.git_commit(ctx.start_dir),
        )
        tags[tracking.FINGERPRINT_TAG] = fingerprint
        tags[tracking.CHECKPOINT_TAG] = str(checkpoint_path)
        tags["device"] = str(device)
        run_id = tracking.start_run(client, experiment_id, name, tags, read_parent_run_id(ctx.sweep_dir))
        tracking.log_params(client, run_id, {**flat_config, "n_params": n_params})

    def on_epoch_end(metrics: EpochMetrics) -> None:
        history.append({"epoch": metrics.epoch, **metrics.as_dict()})
        # Checkpoint first: a kill between the two is repaired on resume from the history.
        save_checkpoint(checkpoint_path, model, optimizer, generator, metrics.epoch, history)
        tracking.log_metrics(client, run_id, metrics.epoch, metrics.as_dict())
        log.info("%s", metrics.log_line())

    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        fit(
            trained_model, optimizer, data, cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size, generator,
            hflip_p=cfg.aug.hflip_p, start_epoch=start_epoch,
            amp_dtype=torch.bfloat16 if cfg.train.amp == "bf16" else None,
            on_epoch_end=on_epoch_end, progress_factory=_progress_factory(sys.stderr.isatty()),
        )
        _log_final_artifacts(client, run_id, model, ctx.output_dir)
        _log_learning_curves(client, run_id, history, name)
    except KeyboardInterrupt as interrupt:
        tracking.end_run(client, run_id, "KILLED", f"interrupted: {interrupt or 'Ctrl-C'}")
        raise
    except BaseException as error:
        tracking.end_run(client, run_id, "FAILED", f"{type(error).__name__}: {error}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    tracking.end_run(client, run_id, "FINISHED")
    return JobResult("FINISHED", name, run_id, test_acc=history[-1]["test_acc"] if history else None)


def _log_missing_epochs(client, run_id: str, history: list[dict[str, float]]) -> None:
    """Log checkpointed epochs whose metrics never reached the store (killed between the two writes)."""
    logged = {m.step for m in client.get_metric_history(run_id, "test_acc")}
    for entry in history:
        if entry["epoch"] not in logged:
            metrics = {k: v for k, v in entry.items() if k != "epoch"}
            tracking.log_metrics(client, run_id, entry["epoch"], metrics)


def _log_final_artifacts(client, run_id: str, model: torch.nn.Module, output_dir: Path) -> None:
    weights = output_dir / "model_state_dict.pt"
    torch.save(model.state_dict(), weights)
    client.log_artifact(run_id, str(weights), "model")
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        client.log_artifacts(run_id, str(hydra_dir), "hydra")


def _log_learning_curves(client, run_id: str, history: list[dict[str, float]], title: str) -> None:
    """The run's loss and accuracy per epoch as the artifact ``curves.png``; a plotting error never fails the run."""
    try:
        from lenet_sweep.figures import plot_run_curves

        client.log_figure(run_id, plot_run_curves(history, title), "curves.png")
    except Exception as error:  # the run trained; a missing figure is only worth a warning
        log.warning("%s: learning curves not logged: %s", title, error)
