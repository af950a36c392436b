"""The training loop: in-memory tensors, AdamW, schedules, phases and early stopping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparse_nas.training._config import TrainConfig, TrainingConfigError
from sparse_nas.training._phases import BaseTrainingPhase
from sparse_nas.training._schedules import learning_rate_at

if TYPE_CHECKING:
    from sparse_nas.datasets import DatasetSplits

AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Takes a training batch of inputs and a seeded generator; returns the batch to train on."""


@dataclass(frozen=True)
class EpochReport:
    """What one completed epoch measured; handed to the per-epoch callback.

    Attributes:
        epoch: Epochs completed so far (1 after the first epoch); usable as the
            ``step`` of ``optuna.Trial.report``.
        train_loss: Mean training loss over the epoch's steps (with label smoothing
            if configured).
        val_accuracy: Accuracy on the validation split after the epoch, in [0, 1].
        lr: Learning rate of the epoch's last step.
        epoch_seconds: Wall time of the epoch, validation included.
        phase_metrics: Each phase's ``metrics()`` after the epoch, keyed
            ``"<phase name>.<metric>"``.
    """

    epoch: int
    train_loss: float
    val_accuracy: float
    lr: float
    epoch_seconds: float
    phase_metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        val_accuracy: Validation accuracy of ``state_dict``, in [0, 1].
        test_accuracy: Test accuracy of ``state_dict``; ``None`` unless asked for.
        train_seconds: Wall time of the training loop, per-epoch validation
            included, test evaluation excluded.
        epochs_completed: Epochs that ran to the end.
        steps_completed: Optimiser steps taken.
        history: One report per completed epoch.
        state_dict: Detached copy of the trained module's state: the final state, or
            the best-validated state so far when training diverged.
        aborted_reason: ``None`` when all epochs ran; otherwise a sentence saying why
            training stopped early (NaN, divergence or the callback).
        diverged: Whether training stopped because the loss became non-finite or
            diverged (as opposed to a callback stop).
        phase_metrics: Each phase's final ``metrics()``, keyed
            ``"<phase name>.<metric>"``.
    """

    val_accuracy: float
    test_accuracy: float | None
    train_seconds: float
    epochs_completed: int
    steps_completed: int
    history: tuple[EpochReport, ...]
    state_dict: dict[str, torch.Tensor]
    aborted_reason: str | None = None
    diverged: bool = False
    phase_metrics: Mapping[str, float] = field(default_factory=dict)


class _Divergence(Exception):
    """Internal signal: the loss check failed; carries the reason."""


def train(
    model: nn.Module,
    splits: DatasetSplits,
    config: TrainConfig,
    *,
    augment: AugmentFn | None = None,
    phases: Sequence[BaseTrainingPhase] = (),
    on_epoch_end: Callable[[EpochReport], bool | None] | None = None,
    evaluate_test: bool = False,
) -> TrainResult:
    """Train a classifier on in-memory tensors and report its accuracy.

    Minimises cross-entropy (optionally label-smoothed) with AdamW (Loshchilov &
    Hutter 2019, arXiv 1711.05101) under a cosine or one-cycle schedule (Smith &
    Topin 2017, arXiv 1708.07120; see :func:`learning_rate_at`). Each epoch draws one
    seeded permutation and trains on contiguous slices of it: no ``DataLoader``, no
    per-sample work, and one host synchronisation per ``check_every_steps`` steps.

    The caller sets torch's thread count (``torch.set_num_threads``); training is
    deterministic for a seed at a fixed thread count. The model is trained in place
    and left in eval mode holding the returned state. Global RNG state is restored
    on return.

    Args:
        model: Any module mapping a batch of ``splits.train.x`` to class logits
            ``(B, num_classes)``. It is moved to the device of the training tensors.
        splits: ``train``, ``val`` and optionally ``test`` splits, each with float
            inputs ``x`` of shape ``(N, ...)`` and int64 labels ``y`` of shape ``(N,)``.
        config: Optimiser, schedule, seed and safety limits.
        augment: Applied to every training batch of inputs with a seeded generator.
        phases: Training phases (pruning, quantisation-aware fine-tuning), called in
            order; see :class:`BaseTrainingPhase`.
        on_epoch_end: Called after each epoch's validation; returning ``True`` stops
            training (e.g. a multi-fidelity pruner decided the trial is hopeless).
        evaluate_test: Also measure accuracy on ``splits.test``.

    Returns:
        The accuracies, timing, history and trained state; see :class:`TrainResult`.

    Raises:
        TrainingConfigError: If the splits are empty or inconsistent, or have fewer
            training samples than one batch when ``drop_last`` is set, or the model
            has no trainable parameters.
    """
    x_train, y_train = _checked_split(splits.train, "train")
    x_val, y_val = _checked_split(splits.val, "val")
    test = (_checked_split(splits.test, "test")) if evaluate_test else None
    device = x_train.device
    n_train = x_train.shape[0]
    if config.drop_last:
        steps_per_epoch = n_train // config.batch_size
    else:
        steps_per_epoch = math.ceil(n_train / config.batch_size)
    if steps_per_epoch == 0:
        raise TrainingConfigError(
            f"train split has {n_train} samples, fewer than batch_size={config.batch_size} "
            "with drop_last=True: no step would run"
        )
    total_steps = config.epochs * steps_per_epoch

    trained = model.to(device)
    if config.memory_format == "channels_last":
        trained = trained.to(memory_format=torch.channels_last)
    for phase in phases:
        trained = phase.wrap_model(trained)
    optimizer = _adamw(trained, config)
    shuffle_seed, augment_seed, torch_seed = np.random.SeedSequence(config.seed).generate_state(3)
    shuffle_gen = torch.Generator().manual_seed(int(shuffle_seed))
    augment_gen = torch.Generator().manual_seed(int(augment_seed))

    loop = _EpochLoop(trained, optimizer, x_train, y_train, config, augment, phases, total_steps, steps_per_epoch)
    history: list[EpochReport] = []
    best_state = _copy_state(trained)
    best_val_accuracy: float | None = None
    aborted_reason: str | None = None
    diverged = False
    start_seconds = time.perf_counter()
    # Dropout and other in-model randomness draw from the global generator: seed it
    # for determinism, and restore it afterwards so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch_seed))
        for phase in phases:
            phase.on_train_start(trained, total_steps)
        try:
            for epoch in range(config.epochs):
                epoch_start_seconds = time.perf_counter()
                train_loss = loop.run_epoch(epoch, shuffle_gen, augment_gen)
                val_accuracy = _accuracy(trained, x_val, y_val, config.eval_batch_size)
                report = EpochReport(
                    epoch=epoch + 1,
                    train_loss=train_loss,
                    val_accuracy=val_accuracy,
                    lr=loop.lr,
                    epoch_seconds=time.perf_counter() - epoch_start_seconds,
                    phase_metrics=_phase_metrics(phases),
                )
                history.append(report)
                if best_val_accuracy is None or val_accuracy > best_val_accuracy:
                    best_val_accuracy = val_accuracy
                    best_state = _copy_state(trained)
                if on_epoch_end is not None and on_epoch_end(report) is True:
                    if epoch + 1 < config.epochs:
                        aborted_reason = (
                            f"stopped by the on_epoch_end callback after epoch {epoch + 1} of {config.epochs}"
                        )
                    break
        except _Divergence as error:
            aborted_reason = str(error)
            diverged = True
            trained.load_state_dict(best_state)
        finally:
            for phase in phases:
                phase.on_train_end()
    train_seconds = time.perf_counter() - start_seconds

    if diverged:
        final_val_accuracy = (
            best_val_accuracy
            if best_val_accuracy is not None
            else _accuracy(trained, x_val, y_val, config.eval_batch_size)
        )
    else:
        final_val_accuracy = history[-1].val_accuracy
    test_accuracy = _accuracy(trained, test[0], test[1], config.eval_batch_size) if test is not None else None
    trained.eval()
    return TrainResult(
        val_accuracy=final_val_accuracy,
        test_accuracy=test_accuracy,
        train_seconds=train_seconds,
        epochs_completed=len(history),
        steps_completed=loop.steps_done,
        history=tuple(history),
        state_dict=_copy_state(trained),
        aborted_reason=aborted_reason,
        diverged=diverged,
        phase_metrics=_phase_metrics(phases),
    )


class _EpochLoop:
    """The optimiser steps of one ``train`` call, epoch by epoch, with the loss watch.

    Records each step's loss on-tensor and looks at them every ``check_every_steps``
    steps (and at the epoch's end), so the host waits on the loss rarely.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        augment: AugmentFn | None,
        phases: Sequence[BaseTrainingPhase],
        total_steps: int,
        steps_per_epoch: int,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.x = x
        self.y = y
        self.config = config
        self.augment = augment
        self.phases = phases
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.use_bf16 = config.precision == "bf16-mixed"
        self.step_losses = torch.empty(steps_per_epoch, device=x.device)
        self.steps_done = 0
        self.initial_loss: float | None = None
        self.lr = learning_rate_at(config, 0, total_steps)

    def run_epoch(self, epoch: int, shuffle_gen: torch.Generator, augment_gen: torch.Generator) -> float:
        """Train one epoch and return its mean loss; raise :class:`_Divergence` on NaN."""
        config, model = self.config, self.model
        batch_size = config.batch_size
        for phase in self.phases:
            phase.on_epoch_start(epoch)
        model.train()
        order = torch.randperm(self.x.shape[0], generator=shuffle_gen).to(self.x.device)
        checked = 0
        for i in range(self.steps_per_epoch):
            batch = order[i * batch_size : (i + 1) * batch_size]
            inputs = self.x.index_select(0, batch)
            if self.augment is not None:
                inputs = self.augment(inputs, augment_gen)
            self.lr = learning_rate_at(config, self.steps_done, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                logits = model(inputs)
            loss = F.cross_entropy(
                logits.float(),
                self.y.index_select(0, batch),
                label_smoothing=config.label_smoothing,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            self.optimizer.step()
            self.step_losses[i] = loss.detach()
            with torch.no_grad():
                for phase in self.phases:
                    phase.on_step_end(self.steps_done)
            self.steps_done += 1
            if i + 1 - checked >= config.check_every_steps or i + 1 == self.steps_per_epoch:
                self._check_losses(checked, i + 1, epoch)
                checked = i + 1
        return float(self.step_losses.mean())

    def _check_losses(self, begin: int, end: int, epoch: int) -> None:
        """Raise :class:`_Divergence` if this epoch's losses ``[begin, end)`` went bad."""
        config = self.config
        if self.initial_loss is None:
            self.initial_loss = float(self.step_losses[0])
        losses = self.step_losses[begin:end]
        first_step = self.steps_done - (end - begin)
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            offset = int((~finite).nonzero()[0, 0])
            raise _Divergence(
                f"loss became {float(losses[offset])} at epoch {epoch + 1} of {config.epochs}, "
                f"step {first_step + offset}; lower lr (now {config.lr:g}) or clip gradients"
            )
        mean_loss = float(losses.mean())
        if mean_loss > config.divergence_loss_factor * self.initial_loss:
            raise _Divergence(
                f"loss diverged at epoch {epoch + 1} of {config.epochs}, steps {first_step}-"
                f"{end - begin + first_step - 1}: mean loss {mean_loss:.4g} exceeds "
                f"{config.divergence_loss_factor:g} x the first step's loss "
                f"{self.initial_loss:.4g}"
            )


def _checked_split(split: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = getattr(split, "x", None)
    y = getattr(split, "y", None)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TrainingConfigError(f"splits.{name} must have tensors .x and .y")
    if x.shape[0] == 0:
        raise TrainingConfigError(f"splits.{name} is empty; the trainer needs samples there")
    if y.shape != (x.shape[0],):
        raise TrainingConfigError(f"splits.{name}.y must have shape ({x.shape[0]},) to match .x, got {tuple(y.shape)}")
    return x, y


def _adamw(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW that decays matrices and kernels only, not biases or normalisation scales."""
    decayed = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    plain = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    if not decayed and not plain:
        raise TrainingConfigError("the model has no trainable parameters")
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=config.lr,
        betas=config.betas,
        foreach=True,
    )


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy in [0, 1], with the model in eval mode and no autograd."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size])
            correct += (logits.argmax(dim=1) == y[start : start + batch_size]).sum()
    return int(correct) / x.shape[0]


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _phase_metrics(phases: Sequence[BaseTrainingPhase]) -> dict[str, float]:
    return {f"{phase.name}.{key}": value for phase in phases for key, value in phase.metrics().items()}
