"""One sweep job: typed config in, one MLflow run out.

Order matters: everything that can be wrong with the input (config ranges, the
tracking store, the data) is checked before a run is created or a batch is
trained, so bad input never leaves a half-written run behind. Once the run
exists this process owns it (``ownership``) until it ends.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lenet_sweep import fast, identity, ownership, store
from lenet_sweep.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from lenet_sweep.config import Config
from lenet_sweep.data import to_model_input
from lenet_sweep.datasets import DatasetSpec, LoadedDataset, load_dataset, log_dataset_input
from lenet_sweep.models import build_model, count_parameters, format_parameter_table
from lenet_sweep.plan import Decision, decide
from lenet_sweep.provenance import Provenance, code_version
from lenet_sweep.results import JobKilled, JobResult, ParentRun
from lenet_sweep.store import Store
from lenet_sweep.train import DeviceData, EpochMetrics, fit, make_optimizer
from lenet_sweep.trial import TRIAL_STATE_TAG, TrialPruned, TrialReporter

log = logging.getLogger(__name__)
# The training loop every job calls (``train.fit``). The one seam for launchers that train many jobs at
# once: the packed launcher (hydra_plugins.lenet_sweep_packed) puts its own here for the length of its launch.
training_loop = fit
CLAIM_ATTEMPTS = 3  # decisions retried when another launcher claims the chosen run first


@dataclass(frozen=True)
class JobContext:
    """Where the job runs, from Hydra's runtime config, as plain values."""

    start_dir: Path
    output_dir: Path
    overrides: tuple[str, ...]  # the job's command-line overrides, sweep values resolved
    sweep_dir: Path | None = None
    job_num: int | None = None
    parallel_jobs: int = 1
    parent: ParentRun | None = None  # the sweep's parent run, when the launching process made one
    # Called after each epoch is checkpointed and logged, with its metrics (tests interrupt jobs there).
    epoch_hook: Callable[[EpochMetrics], None] | None = None


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
        d.val_size,
    )


# The last data set put on a device, and how: the jobs that a process runs one after another (or together,
# packed) on the same data share its tensors, which training only reads.
_last_device_data: tuple[LoadedDataset, float, float, torch.device, DeviceData] | None = None


def _device_data(dataset: LoadedDataset, mean: float, std: float, device: torch.device) -> DeviceData:
    global _last_device_data
    last = _last_device_data
    if last is not None and last[0] is dataset and last[1:4] == (mean, std, device):
        return last[4]
    data = _normalised_on(dataset, mean, std, device)
    _last_device_data = (dataset, mean, std, device, data)
    return data


def _normalised_on(dataset: LoadedDataset, mean: float, std: float, device: torch.device) -> DeviceData:
    return DeviceData(
        to_model_input(dataset.train.images, device, mean, std),
        dataset.train.labels.to(device),
        to_model_input(dataset.test.images, device, mean, std),
        dataset.test.labels.to(device),
        None if dataset.val is None else to_model_input(dataset.val.images, device, mean, std),
        None if dataset.val is None else dataset.val.labels.to(device),
    )


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


@dataclass
class ActiveRun:
    """One job's run once it exists: where it is, what it trains and records, and how it runs."""

    store: Store
    run: OpenedRun
    name: str
    training: Training
    cfg: Config
    ctx: JobContext
    params: dict[str, Any]
    tags: dict[str, str]
    trial: TrialReporter | None = None  # the Optuna trial this job runs, which it reports each epoch to

    @property
    def run_id(self) -> str:
        return self.run.run_id


def run_job(cfg: Config, ctx: JobContext) -> JobResult:
    """Train one configuration into one MLflow run, or skip it when a FINISHED run has the same fingerprint.

    Raises ``ConfigError``/``DataError``/``TrackingError`` before any run exists.
    Once a run exists it always ends FINISHED, FAILED (with the reason) or, on
    Ctrl-C, SIGTERM or lost ownership, KILLED: then ``JobKilled`` carries the job's result.
    """
    name = identity.run_name(cfg, ctx.overrides)
    dataset = load_job_dataset(cfg, ctx.start_dir)  # bad data stops the job before the store is touched
    tracking_uri = store.resolve_tracking_uri(cfg.mlflow.tracking_uri, ctx.start_dir)
    # the launch checked the store already: a job of its sweep rides out a server restart instead of failing
    store.check_reachable(tracking_uri, wait_seconds=store.SERVER_RESTART_SECONDS if ctx.parent else 0)
    runs = Store(tracking_uri)
    experiment_id = runs.get_or_create_experiment(cfg.mlflow.experiment, store.default_artifact_location(tracking_uri))
    flat_config = identity.flat_config(cfg)
    fingerprint = identity.config_fingerprint(flat_config)
    stale_after_seconds = cfg.sweep.orphan_after_minutes * 60
    if ctx.parent is None:  # in a multirun the launching process did this before any job started
        close_orphans(runs, experiment_id, stale_after_seconds)
    provenance = Provenance(code_version(), data_digest=dataset.digest)
    trial = TrialReporter.from_environment()  # set by the Optuna sweeper (hydra/sweeper=optuna)
    training = None
    for _ in range(CLAIM_ATTEMPTS):
        decision = decide(runs, experiment_id, fingerprint, cfg.sweep.skip_finished, cfg.sweep.resume, provenance)
        if decision.action == "skip":
            log.info("skip %s: already FINISHED as run %s (%s)", name, decision.run.info.run_id, decision.reason)
            return JobResult("SKIPPED", name, decision.run.info.run_id)
        training = training or build_training(cfg, ctx, dataset)
        try:
            run = open_run(runs, experiment_id, name, fingerprint, decision, ctx, stale_after_seconds)
            break
        except ownership.ClaimLost as lost:
            log.info("%s: %s; deciding again", name, lost)
    else:
        return JobResult("SKIPPED", name, reason=f"another launcher claimed its run each of {CLAIM_ATTEMPTS} times")
    log.info(
        "%s: %s, %d trainable parameters on %s\n%s",
        name,
        cfg.model.arch,
        count_parameters(training.model),
        training.device,
        format_parameter_table(training.model),
    )
    params = {**flat_config, "n_params": count_parameters(training.model)}
    tags = {**provenance.tags(), store.CONFIG_GROUP_TAG: identity.config_group(flat_config)}
    if trial is not None:
        tags.update(trial.run_tags())
        trial.attach_run(run.run_id)
    return train_run(ActiveRun(runs, run, name, training, cfg, ctx, params, tags, trial))


def close_orphans(runs: Store, experiment_id: str, stale_after_seconds: float) -> None:
    for orphan in ownership.close_orphaned_runs(runs, experiment_id, stale_after_seconds):
        log.warning("run %s was left RUNNING (%s); marked KILLED", orphan.run_id, orphan.reason)


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


def open_run(
    runs: Store,
    experiment_id: str,
    name: str,
    fingerprint: str,
    decision: Decision,
    ctx: JobContext,
    stale_after_seconds: float,
) -> OpenedRun:
    """Claim and reopen the run ``decision`` continues (resume, take over), or create a new one; RUNNING from here.

    ``ownership.ClaimLost`` when another process claimed that run first. A run
    taken over died before its first checkpoint: it trains from epoch 1, so a
    relaunch never leaves an empty KILLED run beside a new one.
    """
    checkpoint_path = ctx.output_dir / CHECKPOINT_NAME
    if decision.run is not None:
        claimed = ownership.claim(runs, decision.run.info.run_id, stale_after_seconds)  # owner tags first
        runs.reopen_run(claimed.info.run_id)
        if decision.checkpoint is not None:
            return OpenedRun(claimed.info.run_id, decision.checkpoint, decision.checkpoint, claimed.data.tags)
        return OpenedRun(claimed.info.run_id, checkpoint_path, None, claimed.data.tags)
    tags = {
        **ownership.owner_tags(),
        store.FINGERPRINT_TAG: fingerprint,
        store.CHECKPOINT_TAG: str(checkpoint_path),
    }
    parent_run_id = ctx.parent.run_id if ctx.parent else None
    return OpenedRun(runs.create_run(experiment_id, name, tags, parent_run_id), checkpoint_path)


def train_run(active: ActiveRun) -> JobResult:
    """Everything after the run exists, under one ``try``: whatever happens, the run ends.

    Only a run that another process has taken over is left as it is: it is not this job's any more.
    """
    runs, run_id = active.store, active.run_id
    heartbeat = ownership.Heartbeat(runs, run_id, active.cfg.sweep.orphan_after_minutes * 60)
    try:
        with heartbeat:
            history = _prepare_run(active)
            if active.trial is not None:  # a retried trial continues its run: the study hears the epochs so far
                active.trial.replay(history)
            _train(active, history, heartbeat)
            _log_final_artifacts(runs, run_id, active.training.model, active.ctx.output_dir)
            _log_learning_curves(runs, run_id, history, active.name)
    except TrialPruned as pruned:  # the study's pruner stopped it: the run ends as trained so far
        runs.set_tags(run_id, {TRIAL_STATE_TAG: "PRUNED"})
        runs.end_run(run_id, "FINISHED")
        return JobResult("PRUNED", active.name, run_id, reason=str(pruned))
    except KeyboardInterrupt as caught:
        # A lost heartbeat interrupts with SIGINT, or the check after an epoch raises OwnershipLost.
        interrupt = ownership.OwnershipLost(heartbeat.lost_reason) if heartbeat.lost else caught
        reason = f"interrupted: {interrupt or 'Ctrl-C'}"
        if not heartbeat.taken_over:
            log.warning("%s %s; ending run %s KILLED", active.name, reason, run_id)
            _end_quietly(runs, run_id, "KILLED", reason)
        raise JobKilled(JobResult("KILLED", active.name, run_id, reason=reason), interrupt) from interrupt
    except BaseException as error:
        runs.end_run(run_id, "FAILED", f"{type(error).__name__}: {error}")
        raise
    runs.end_run(run_id, "FINISHED")
    return JobResult("FINISHED", active.name, run_id, test_acc=history[-1]["test_acc"] if history else None)


def _end_quietly(runs: Store, run_id: str, status: str, reason: str) -> None:
    """End the run; a store that does not answer leaves it RUNNING, for the next launch to close as an orphan."""
    try:
        runs.end_run(run_id, status, reason)
    except Exception as error:
        log.error("run %s could not be marked %s (%s): the next launch closes it", run_id, status, error)


def _train(active: ActiveRun, history: list[dict[str, float]], heartbeat: ownership.Heartbeat) -> None:
    """The epochs after ``history``'s last, each checkpointed, then logged."""
    training, cfg = active.training, active.cfg

    def on_epoch_end(metrics: EpochMetrics) -> None:
        if heartbeat.lost:  # the main thread may have been in C code when the heartbeat interrupted it
            raise ownership.OwnershipLost(heartbeat.lost_reason)
        history.append({"epoch": metrics.epoch, **metrics.as_dict()})
        # Checkpoint first: a kill between the two is repaired on resume from the history.
        save_checkpoint(
            active.run.checkpoint_path, training.model, training.optimizer, training.generator, metrics.epoch, history
        )
        active.store.log_metrics(active.run_id, metrics.epoch, metrics.as_dict())
        log.info("%s", metrics.log_line())
        if active.ctx.epoch_hook is not None:
            active.ctx.epoch_hook(metrics)
        if active.trial is not None:  # after the epoch is saved and logged: a pruned run keeps what it trained
            active.trial.report(metrics.epoch, metrics.as_dict())

    training_loop(
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


def _prepare_run(active: ActiveRun) -> list[dict[str, float]]:
    """Tags, params and, when continuing, the checkpoint's state; the metric history so far."""
    ctx, run, training, runs = active.ctx, active.run, active.training, active.store
    tags = {"hydra.overrides": " ".join(ctx.overrides) or "(defaults)"}
    if ctx.sweep_dir is not None:
        tags.update({"hydra.sweep_dir": str(ctx.sweep_dir), "hydra.job_num": str(ctx.job_num)})
    tags.update(active.tags)
    tags[store.CHECKPOINT_TAG] = str(run.checkpoint_path)
    tags["device"] = str(training.device)
    tags["kernels"] = training.kernels
    if ctx.parent is not None:  # a run continued by a relaunch joins the sweep that now holds it
        tags[store.MLFLOW_PARENT_RUN_ID] = ctx.parent.run_id
    runs.set_tags(run.run_id, tags)
    runs.log_params(run.run_id, active.params)
    log_dataset_input(runs, run.run_id, training.dataset)  # a reopened run's input is logged once only
    if run.resume_from is None:
        if run.previous_tags:
            log.info(
                "take over %s: run %s died before its first checkpoint; training from epoch 1", active.name, run.run_id
            )
        return []
    last_epoch, history = load_checkpoint(run.resume_from, training.model, training.optimizer, training.generator)
    _log_missing_epochs(runs, run.run_id, history)
    log.info("resume %s: run %s from epoch %d (%s)", active.name, run.run_id, last_epoch + 1, run.resume_from)
    return history


def _log_missing_epochs(runs: Store, run_id: str, history: list[dict[str, float]]) -> None:
    """Log checkpointed epochs whose metrics never reached the store (killed between the two writes)."""
    logged = {m.step for m in runs.metric_history(run_id, "test_acc")}
    for entry in history:
        if entry["epoch"] not in logged:
            runs.log_metrics(run_id, entry["epoch"], {k: v for k, v in entry.items() if k != "epoch"})


def _log_final_artifacts(runs: Store, run_id: str, model: torch.nn.Module, output_dir: Path) -> None:
    weights = output_dir / "model_state_dict.pt"
    torch.save(model.state_dict(), weights)
    runs.log_artifact(run_id, weights, "model")
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        runs.log_artifacts(run_id, hydra_dir, "hydra")


def _log_learning_curves(runs: Store, run_id: str, history: list[dict[str, float]], title: str) -> None:
    """The run's loss and accuracy per epoch as the artifact ``curves.png``; a plotting error never fails the run."""
    try:
        from lenet_sweep.figures import plot_run_curves

        runs.log_figure(run_id, plot_run_curves(history, title), "curves.png")
    except Exception as error:  # the run trained; a missing figure is only worth a warning
        log.warning("%s: learning curves not logged: %s", title, error)
