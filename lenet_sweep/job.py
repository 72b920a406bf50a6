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
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lenet_sweep import fast, identity, tracking
from lenet_sweep.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from lenet_sweep.config import Config
from lenet_sweep.data import to_model_input
from lenet_sweep.datasets import DatasetSpec, LoadedDataset, load_dataset, log_dataset_input
from lenet_sweep.models import build_model, count_parameters, format_parameter_table
from lenet_sweep.plan import Decision, decide
from lenet_sweep.provenance import Provenance, code_version
from lenet_sweep.train import DeviceData, EpochMetrics, fit, make_optimizer

log = logging.getLogger(__name__)
STATUS_FILE = "job_status.json"
PARENT_RUN_FILE = "mlflow_parent_run.json"


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, preemption, a launcher shutting down): the run ends KILLED."""


@dataclass(frozen=True)
class JobContext:
    """Where the job runs, from Hydra's runtime config, as plain values."""

    start_dir: Path
    output_dir: Path
    overrides: tuple[str, ...]  # the job's command-line overrides, sweep values resolved
    sweep_dir: Path | None = None
    job_num: int | None = None
    parallel_jobs: int = 1


@dataclass
class JobResult:
    status: str  # FINISHED, FAILED, KILLED or SKIPPED
    run_name: str
    run_id: str | None = None
    reason: str | None = None
    test_acc: float | None = None

    def write(self, directory: Path) -> None:
        (directory / STATUS_FILE).write_text(json.dumps(asdict(self)))


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


def read_parent_run_id(sweep_dir: Path | None) -> str | None:
    """The sweep's parent run, written into the sweep directory when the multirun started."""
    if sweep_dir is None or not (sweep_dir / PARENT_RUN_FILE).is_file():
        return None
    return json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"]


def raise_terminated(signum, frame):
    """A SIGTERM handler: the signal becomes an exception, so runs are closed on the way out."""
    raise Terminated(f"received signal {signum}")


class Requeued(KeyboardInterrupt):
    """SLURM preempted the job or its time ran out, and submitit requeued it: it resumes from its checkpoint."""


@contextmanager
def signals_as_interrupts():
    """Inside, SIGTERM raises ``Terminated``, and submitit's requeue on SIGUSR2 raises ``Requeued``.

    Either way the job closes its run KILLED and says why. submitit's own USR2
    handler (checkpoint, ``scontrol requeue``, exit) still does the requeueing.
    """
    previous_term = signal.signal(signal.SIGTERM, raise_terminated)
    previous_usr2 = signal.getsignal(signal.SIGUSR2)
    if callable(previous_usr2):

        def requeue(signum, frame):
            # `scontrol requeue` stops this run of the job with SIGTERM: that is the requeue, not a cancel.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                previous_usr2(signum, frame)
            except SystemExit:  # requeued: the process must end now, as submitit meant it to
                raise Requeued("preempted or out of time; SLURM requeued the job, which resumes the run") from None
            except BaseException:  # not requeued (out of time too often): a SIGTERM is a cancel again
                signal.signal(signal.SIGTERM, raise_terminated)
                raise

        signal.signal(signal.SIGUSR2, requeue)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if callable(previous_usr2):
            signal.signal(signal.SIGUSR2, previous_usr2)


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


def load_job_dataset(cfg: Config, start_dir: Path) -> LoadedDataset:
    """The data set ``cfg`` names, verified (``DataError`` in one line otherwise); paths are from ``start_dir``."""

    def path(p: str | None) -> str | None:
        return None if p is None else str((start_dir / p).resolve())

    d = cfg.data
    spec = DatasetSpec.of(d.name, d.md5, d.mean, d.std, d.torchvision_class, path(d.system_dir), d.system_package)
    return load_dataset(
        spec,
        d.format,
        path(d.root),
        d.download,
        path(d.train_dir),
        path(d.test_dir),
        d.train_limit,
        d.test_limit,
        d.subset_seed,
    )


def _device_data(dataset: LoadedDataset, mean: float, std: float, device: torch.device) -> DeviceData:
    return DeviceData(
        to_model_input(dataset.train.images, device, mean, std),
        dataset.train.labels.to(device),
        to_model_input(dataset.test.images, device, mean, std),
        dataset.test.labels.to(device),
    )


def _close_orphans(client, experiment_id: str, orphan_after_minutes: float) -> None:
    for run_id, reason in tracking.close_orphaned_runs(client, experiment_id, orphan_after_minutes * 60):
        log.warning("run %s was left RUNNING (%s); marked KILLED", run_id, reason)


@dataclass
class Training:
    """What one job trains, built before its run exists: a failure here leaves nothing in the store."""

    model: torch.nn.Module
    trained_model: torch.nn.Module  # ``model``'s fast path (``fast.accelerate``), or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    data: DeviceData
    device: torch.device
    dataset: LoadedDataset  # what ``data`` was made from, as the run records it
    kernels: str  # which path runs LeNet-5's conv blocks, for the run's tags


@dataclass(frozen=True)
class OpenedRun:
    """A run this job owns from now on: new (``resume_from`` None) or reopened to continue."""

    run_id: str
    checkpoint_path: Path
    resume_from: Path | None = None  # the checkpoint to continue from
    previous_tags: Mapping[str, str] = field(default_factory=dict)


def run_job(cfg: Config, ctx: JobContext) -> JobResult:
    """Train one configuration into one MLflow run, or skip it when a FINISHED run has the same fingerprint.

    Raises ``ConfigError``/``DataError``/``TrackingError`` before any run exists.
    Once a run exists it always ends FINISHED, FAILED (with the reason) or, on
    Ctrl-C or SIGTERM, KILLED: the interrupt propagates with the job's result as ``job_result``.
    """
    name = identity.run_name(cfg, ctx.overrides)
    dataset = load_job_dataset(cfg, ctx.start_dir)  # bad data stops the job before the store is touched
    tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri, ctx.start_dir)
    tracking.check_reachable(tracking_uri)
    client = tracking.MlflowClient(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(
        client, cfg.mlflow.experiment, tracking.default_artifact_location(tracking_uri)
    )
    flat_config = identity.flat_config(cfg)
    fingerprint = identity.config_fingerprint(flat_config)
    if ctx.sweep_dir is None:  # in a multirun the launching process did this before any job started
        _close_orphans(client, experiment_id, cfg.sweep.orphan_after_minutes)
    provenance = Provenance(code_version(), data_digest=dataset.digest)
    decision = decide(client, experiment_id, fingerprint, cfg.sweep.skip_finished, cfg.sweep.resume, provenance)
    if decision.action == "skip":
        log.info("skip %s: already FINISHED as run %s (%s)", name, decision.run.info.run_id, decision.reason)
        return JobResult("SKIPPED", name, decision.run.info.run_id)
    training = build_training(cfg, ctx, dataset)
    log.info(
        "%s: %s, %d trainable parameters on %s\n%s",
        name,
        cfg.model.arch,
        count_parameters(training.model),
        training.device,
        format_parameter_table(training.model),
    )
    run = open_run(client, experiment_id, name, fingerprint, decision, ctx)
    params = {**flat_config, "n_params": count_parameters(training.model)}
    tags = {**provenance.tags(), tracking.CONFIG_GROUP_TAG: identity.config_group(flat_config)}
    return train_run(client, run, name, training, cfg, params, tags, ctx)


def build_training(cfg: Config, ctx: JobContext, dataset: LoadedDataset) -> Training:
    """Threads, device, data on it, model and optimizer for ``cfg``, seeded; no run is touched."""
    torch.set_num_threads(pick_threads(cfg.train.threads, ctx.parallel_jobs))
    device = pick_device(cfg.device)
    data = _device_data(dataset, cfg.data.mean, cfg.data.std, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.arch, cfg.model.regularization.dropout, cfg.model.regularization.batchnorm).to(device)
    fast_path = fast.accelerate(model, device, cfg.train.kernels, cfg.train.batch_size, cfg.train.eval_batch_size)
    optimizer = make_optimizer(
        fast_path.parameters, cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay
    )
    trained_model = torch.compile(fast_path.module) if cfg.train.compile else fast_path.module
    generator = torch.Generator().manual_seed(cfg.seed)
    return Training(model, trained_model, optimizer, generator, data, device, dataset, fast_path.kernels)


def open_run(client, experiment_id: str, name: str, fingerprint: str, decision: Decision, ctx: JobContext) -> OpenedRun:
    """Reopen the run ``decision`` continues (resume, take over), or create a new one; RUNNING from here on.

    A run taken over died before its first checkpoint: it trains from epoch 1, so
    a relaunch never leaves an empty KILLED run beside a new one.
    """
    checkpoint_path = ctx.output_dir / CHECKPOINT_NAME
    if decision.run is not None:
        run_id = decision.run.info.run_id
        tracking.set_tags(client, run_id, tracking.owner_tags())  # before RUNNING: never a dead owner
        client.update_run(run_id, status="RUNNING")
        if decision.checkpoint is not None:
            return OpenedRun(run_id, decision.checkpoint, decision.checkpoint, decision.run.data.tags)
        return OpenedRun(run_id, checkpoint_path, None, decision.run.data.tags)
    tags = {tracking.FINGERPRINT_TAG: fingerprint, tracking.CHECKPOINT_TAG: str(checkpoint_path)}
    run_id = tracking.start_run(client, experiment_id, name, tags, read_parent_run_id(ctx.sweep_dir))
    return OpenedRun(run_id, checkpoint_path)


def train_run(
    client,
    run: OpenedRun,
    name: str,
    training: Training,
    cfg: Config,
    params: dict[str, Any],
    tags: dict[str, str],
    ctx: JobContext,
) -> JobResult:
    """Everything after the run exists, under one ``try``: whatever happens, the run ends."""
    try:
        with tracking.Heartbeat(client, run.run_id):
            history = _prepare_run(client, run, name, training, params, tags, ctx)
            _train(client, run, training, cfg, history)
            _log_final_artifacts(client, run.run_id, training.model, ctx.output_dir)
            _log_learning_curves(client, run.run_id, history, name)
    except KeyboardInterrupt as interrupt:
        reason = f"interrupted: {interrupt or 'Ctrl-C'}"
        tracking.end_run(client, run.run_id, "KILLED", reason)
        interrupt.job_result = JobResult("KILLED", name, run.run_id, reason=reason)  # for the job's status file
        raise
    except BaseException as error:
        tracking.end_run(client, run.run_id, "FAILED", f"{type(error).__name__}: {error}")
        raise
    tracking.end_run(client, run.run_id, "FINISHED")
    return JobResult("FINISHED", name, run.run_id, test_acc=history[-1]["test_acc"] if history else None)


def _train(client, run: OpenedRun, training: Training, cfg: Config, history: list[dict[str, float]]) -> None:
    """The epochs after ``history``'s last, each checkpointed, then logged."""

    def on_epoch_end(metrics: EpochMetrics) -> None:
        history.append({"epoch": metrics.epoch, **metrics.as_dict()})
        # Checkpoint first: a kill between the two is repaired on resume from the history.
        save_checkpoint(
            run.checkpoint_path, training.model, training.optimizer, training.generator, metrics.epoch, history
        )
        tracking.log_metrics(client, run.run_id, metrics.epoch, metrics.as_dict())
        log.info("%s", metrics.log_line())

    fit(
        training.trained_model,
        training.optimizer,
        training.data,
        cfg.train.epochs,
        cfg.train.batch_size,
        cfg.train.eval_batch_size,
        training.generator,
        hflip_p=cfg.aug.hflip_p,
        start_epoch=history[-1]["epoch"] + 1 if history else 1,
        amp_dtype=torch.bfloat16 if cfg.train.amp == "bf16" else None,
        on_epoch_end=on_epoch_end,
        progress_factory=_progress_factory(sys.stderr.isatty()),
    )


def _prepare_run(
    client,
    run: OpenedRun,
    name: str,
    training: Training,
    params: dict[str, Any],
    provenance_tags: dict[str, str],
    ctx: JobContext,
) -> list[dict[str, float]]:
    """Tags, params and, when continuing, the checkpoint's state; the metric history so far."""
    tags = tracking.tags_for_job(" ".join(ctx.overrides), str(ctx.sweep_dir) if ctx.sweep_dir else None, ctx.job_num)
    tags.update(provenance_tags)
    tags.update(tracking.owner_tags())
    tags[tracking.CHECKPOINT_TAG] = str(run.checkpoint_path)
    tags["device"] = str(training.device)
    tags["kernels"] = training.kernels
    parent_run_id = read_parent_run_id(ctx.sweep_dir)
    if parent_run_id:  # a run continued by a relaunch joins the sweep that now holds it
        tags[tracking.MLFLOW_PARENT_RUN_ID] = parent_run_id
    tracking.set_tags(client, run.run_id, tags)
    if tracking.FAILURE_TAG in run.previous_tags:  # that failure is being repaired
        client.delete_tag(run.run_id, tracking.FAILURE_TAG)
    tracking.log_params(client, run.run_id, params)
    log_dataset_input(client, run.run_id, training.dataset)  # a reopened run's input is logged once only
    if run.resume_from is None:
        if run.previous_tags:
            log.info("take over %s: run %s died before its first checkpoint; training from epoch 1", name, run.run_id)
        return []
    last_epoch, history = load_checkpoint(run.resume_from, training.model, training.optimizer, training.generator)
    _log_missing_epochs(client, run.run_id, history)
    log.info("resume %s: run %s from epoch %d (%s)", name, run.run_id, last_epoch + 1, run.resume_from)
    return history


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
