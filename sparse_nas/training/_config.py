"""Training configuration and its validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sparse_nas.errors import SparseNASError

ScheduleName = Literal["cosine", "onecycle"]
"""Learning-rate schedules the trainer knows; see :func:`learning_rate_at`."""

MemoryFormatName = Literal["contiguous", "channels_last"]
"""Memory layout of 4-D weights and activations during training."""

PrecisionName = Literal["fp32", "bf16-mixed"]
"""Arithmetic of the training forward pass; weights and optimiser state stay float32."""

_SCHEDULES: tuple[str, ...] = ("cosine", "onecycle")
_MEMORY_FORMATS: tuple[str, ...] = ("contiguous", "channels_last")
_PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed")
# Defaults of one-cycle follow PyTorch's OneCycleLR (pct_start 0.3, div_factor 25,
# final_div_factor 1e4), itself after Smith & Topin 2017 (arXiv 1708.07120).
_ONECYCLE_WARMUP_FRACTION = 0.3
_ONECYCLE_FINAL_LR_FRACTION = 1.0 / (25.0 * 1e4)


class TrainingConfigError(SparseNASError, ValueError):
    """A training configuration, phase or input that the trainer cannot use."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model: optimiser, schedule, regularisation, seed and safety limits.

    The optimiser is AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay
    Regularization", arXiv 1711.05101). Weight decay applies to weights of two or more
    dimensions only; biases and normalisation parameters are not decayed.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Samples per optimiser step.
        lr: Peak learning rate of the schedule.
        weight_decay: AdamW decoupled weight decay of conv/linear weights.
        betas: AdamW moment coefficients.
        schedule: ``"cosine"`` (optional linear warmup, then cosine decay) or
            ``"onecycle"`` (cosine rise then cosine decay; Smith & Topin 2017,
            arXiv 1708.07120). Momentum is not cycled.
        warmup_fraction: Fraction of all steps spent rising to ``lr``. ``None`` means
            0.0 for cosine and 0.3 for one-cycle.
        start_lr_fraction: Learning rate at step 0 of the rise, as a fraction of ``lr``
            (one-cycle's ``1 / div_factor``).
        final_lr_fraction: Learning rate reached at the end, as a fraction of ``lr``.
            ``None`` means 0.0 for cosine and 1/(25 * 1e4) for one-cycle.
        label_smoothing: Cross-entropy label smoothing (Szegedy et al. 2016); 0 disables.
        grad_clip_norm: Clip the global gradient L2 norm to this value; ``None`` disables.
        seed: Seeds shuffling, augmentation and any randomness inside the model
            (dropout). The model's initial weights are the caller's.
        eval_batch_size: Samples per forward pass when evaluating.
        drop_last: Drop the last incomplete batch of each epoch (keeps batch
            normalisation away from tiny batches).
        divergence_loss_factor: Abort when the mean loss over a check window exceeds
            this multiple of the first step's loss.
        check_every_steps: Steps between checks of the loss for NaN, inf or
            divergence; also checked at each epoch's end. Larger means fewer
            synchronisations, at the price of training on for a few steps after a NaN.
        memory_format: ``"channels_last"`` (the default) stores 4-D weights, and so
            conv activations, as NHWC, which oneDNN trains 1.1-2x faster on CPU than
            NCHW for small conv nets (``bench/train_throughput.py``); it is the same
            computation up to summation order and leaves models without 4-D weights
            untouched. ``"contiguous"`` keeps PyTorch's NCHW.
        precision: ``"bf16-mixed"`` runs the training forward pass under
            ``torch.autocast`` in bfloat16 (weights, gradients and AdamW state stay
            float32). Faster only on CPUs with native bf16 (AVX512-BF16 or AMX);
            evaluation always runs in float32.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: ScheduleName = "cosine"
    warmup_fraction: float | None = None
    start_lr_fraction: float = 0.04
    final_lr_fraction: float | None = None
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    seed: int = 0
    eval_batch_size: int = 2048
    drop_last: bool = True
    divergence_loss_factor: float = 10.0
    check_every_steps: int = 50
    memory_format: MemoryFormatName = "channels_last"
    precision: PrecisionName = "fp32"

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", self.epochs, "must be at least 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "must be a positive number")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            "betas",
            self.betas,
            "must be two numbers in [0, 1)",
        )
        _require(self.schedule in _SCHEDULES, "schedule", self.schedule, f"must be one of {_SCHEDULES}")
        if self.warmup_fraction is not None:
            _require(
                0.0 <= self.warmup_fraction < 1.0,
                "warmup_fraction",
                self.warmup_fraction,
                "must be in [0, 1)",
            )
        _require(
            0.0 < self.start_lr_fraction <= 1.0,
            "start_lr_fraction",
            self.start_lr_fraction,
            "must be in (0, 1]",
        )
        if self.final_lr_fraction is not None:
            _require(
                0.0 <= self.final_lr_fraction <= 1.0,
                "final_lr_fraction",
                self.final_lr_fraction,
                "must be in [0, 1]",
            )
        _require(
            0.0 <= self.label_smoothing < 1.0,
            "label_smoothing",
            self.label_smoothing,
            "must be in [0, 1)",
        )
        if self.grad_clip_norm is not None:
            _require(self.grad_clip_norm > 0, "grad_clip_norm", self.grad_clip_norm, "must be > 0")
        _require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        _require(
            self.divergence_loss_factor > 1.0,
            "divergence_loss_factor",
            self.divergence_loss_factor,
            "must be greater than 1",
        )
        _require(self.check_every_steps >= 1, "check_every_steps", self.check_every_steps, "must be >= 1")
        _require(
            self.memory_format in _MEMORY_FORMATS,
            "memory_format",
            self.memory_format,
            f"must be one of {_MEMORY_FORMATS}",
        )
        _require(
            self.precision in _PRECISIONS,
            "precision",
            self.precision,
            f"must be one of {_PRECISIONS}",
        )

    @property
    def effective_warmup_fraction(self) -> float:
        """Warmup fraction with the schedule's default filled in."""
        if self.warmup_fraction is not None:
            return self.warmup_fraction
        return _ONECYCLE_WARMUP_FRACTION if self.schedule == "onecycle" else 0.0

    @property
    def effective_final_lr_fraction(self) -> float:
        """Final learning-rate fraction with the schedule's default filled in."""
        if self.final_lr_fraction is not None:
            return self.final_lr_fraction
        return _ONECYCLE_FINAL_LR_FRACTION if self.schedule == "onecycle" else 0.0


def _require(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        raise TrainingConfigError(f"TrainConfig.{field} {rule}, got {value!r}")
