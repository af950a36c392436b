"""One trial's work, where it runs (the driver process or a Ray worker): build, train, measure.

:func:`run_trial` takes a :class:`TrialTask` (everything the worker needs besides the
search space and the dataset, which each executor ships once) and returns a
:class:`TrialOutcome`. It never touches the database: only the driver writes (that is
what keeps SQLite safe as the default storage), so the trained weights travel back as
bytes and the driver stores them as the trial's artifact.

Training is deterministic for the task: the model's initial weights and the trainer
are seeded from :func:`trial_seed` (the job's seed and the point's parameters), at a
fixed thread count; a trial repeated after its driver died trains the same model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from hw_models import DeviceSpec, estimate
from search_spaces.families import BaseSearchSpace
from sparse_nas.datasets import DatasetSplits
from sparse_nas.training import EpochReport, LayerwisePruningSchedulePhase, TrainConfig, train

OutcomeStatus = Literal["complete", "stopped", "failed", "lost"]
"""``lost``: the worker (process or node) running the task died; set by the executor."""


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to train one point.

    Attributes:
        number: The Optuna trial number (for messages and the driver's bookkeeping).
        params: The point of the search space.
        train_config: Training fidelity, already seeded with :func:`trial_seed`.
        stop_below: Early-stopping rungs: after epoch ``e`` (a key), the trial stops if
            its validation accuracy is below the value. Empty: train every epoch.
        threads: Torch intra-op threads (the CPUs the trial was given).
        device: Target device, to cost the trained network's real densities.
        runtime: Deployment runtime name of the costs.
    """

    number: int
    params: dict[str, Any]
    train_config: TrainConfig
    stop_below: dict[int, float]
    threads: int
    device: DeviceSpec
    runtime: str


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial measured, sent back to the driver.

    Attributes:
        number: The trial number of the task.
        status: ``complete`` (all epochs), ``stopped`` (early-stopping rung) or ``failed``.
        reason: Why the trial stopped or failed; None when complete.
        epoch_accuracies: Validation accuracy after each completed epoch.
        val_accuracy: Validation accuracy of the returned weights.
        test_accuracy: Test-split accuracy of the returned weights (complete trials).
        train_seconds: The trainer's wall time.
        worker_seconds: Wall time of the whole task in the worker (build, train, costing).
        nonzero_params: Non-zero weights of the trained model (its real masks).
        worker_pid: Process id of the worker that ran the task.
        worker_started_at: Unix time at which the worker started the task.
        weights: ``torch.save`` of the trained ``state_dict``; None when failed.
    """

    number: int
    status: OutcomeStatus
    reason: str | None = None
    epoch_accuracies: tuple[float, ...] = ()
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    train_seconds: float = 0.0
    worker_seconds: float = 0.0
    nonzero_params: int | None = None
    worker_pid: int = 0
    worker_started_at: float = 0.0
    weights: bytes | None = field(default=None, repr=False)


def trial_seed(job_seed: int, params: Mapping[str, Any]) -> int:
    """A 31-bit seed from the job's seed and the point: same point, same trained model."""
    text = json.dumps({"seed": job_seed, "params": dict(params)}, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def make_task(
    number: int,
    params: Mapping[str, Any],
    config: TrainConfig,
    job_seed: int,
    *,
    stop_below: Mapping[int, float],
    threads: int,
    device: DeviceSpec,
    runtime: str,
) -> TrialTask:
    """A task with its training seeded by :func:`trial_seed`."""
    return TrialTask(
        number=number,
        params=dict(params),
        train_config=replace(config, seed=trial_seed(job_seed, params)),
        stop_below=dict(stop_below),
        threads=threads,
        device=device,
        runtime=runtime,
    )


def run_trial(task: TrialTask, space: BaseSearchSpace, splits: DatasetSplits) -> TrialOutcome:
    """Build, train and measure one point. Exceptions become a ``failed`` outcome."""
    start = time.perf_counter()
    worker = {"worker_pid": os.getpid(), "worker_started_at": time.time()}
    torch.set_num_threads(task.threads)
    accuracies: list[float] = []

    def on_epoch_end(report: EpochReport) -> bool:
        accuracies.append(report.val_accuracy)
        floor = task.stop_below.get(report.epoch)
        return floor is not None and report.val_accuracy < floor

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task.train_config.seed)
            model = space.build(task.params)
        result = train(
            model,
            splits,
            task.train_config,
            phases=[LayerwisePruningSchedulePhase()],
            on_epoch_end=on_epoch_end,
            evaluate_test=True,
        )
        if result.diverged:
            return TrialOutcome(
                number=task.number,
                status="failed",
                reason=f"training diverged: {result.aborted_reason}",
                epoch_accuracies=tuple(accuracies),
                train_seconds=result.train_seconds,
                worker_seconds=time.perf_counter() - start,
                **worker,
            )
        network = space.network_from_model(model, task.params)
        nonzero = estimate(network, task.device, task.runtime).nonzero_params
        buffer = io.BytesIO()
        torch.save(result.state_dict, buffer)
        stopped = result.epochs_completed < task.train_config.epochs
        return TrialOutcome(
            number=task.number,
            status="stopped" if stopped else "complete",
            reason=(
                f"stopped early after epoch {result.epochs_completed} of {task.train_config.epochs}: validation "
                f"accuracy {accuracies[-1]:.4f} is below the rung's bar {task.stop_below[result.epochs_completed]:.4f}"
                if stopped
                else None
            ),
            epoch_accuracies=tuple(accuracies),
            val_accuracy=result.val_accuracy,
            test_accuracy=result.test_accuracy,
            train_seconds=result.train_seconds,
            worker_seconds=time.perf_counter() - start,
            nonzero_params=int(nonzero),
            **worker,
            weights=buffer.getvalue(),
        )
    except Exception as exc:  # a trial's failure must not stop the job; the reason is recorded
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
        return TrialOutcome(
            number=task.number,
            status="failed",
            reason=f"{type(exc).__name__}: {exc}{at}",
            epoch_accuracies=tuple(accuracies),
            worker_seconds=time.perf_counter() - start,
            **worker,
        )
