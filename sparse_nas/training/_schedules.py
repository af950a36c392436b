"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from sparse_nas.training._config import TrainConfig, TrainingConfigError


def learning_rate_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) out of ``total_steps``.

    Both schedules rise from ``lr * start_lr_fraction`` to ``lr`` over the first
    ``warmup_fraction`` of the steps, then follow a half cosine down to
    ``lr * final_lr_fraction`` at the last step.

    * ``"cosine"``: linear rise, then cosine decay (Loshchilov & Hutter 2017, SGDR,
      arXiv 1608.03983, without restarts). Without warmup this equals PyTorch's
      ``CosineAnnealingLR(T_max=total_steps)``.
    * ``"onecycle"``: cosine rise and cosine decay, the one-cycle policy of Smith &
      Topin 2017 (arXiv 1708.07120) with the step arithmetic of PyTorch's
      ``OneCycleLR(anneal_strategy="cos", three_phase=False)``, which it reproduces.

    Args:
        config: Supplies ``lr``, ``schedule`` and the warmup and end fractions.
        step: Index of the optimiser step, ``0 <= step < total_steps``.
        total_steps: Number of optimiser steps of the whole run.

    Returns:
        The learning rate for that step.

    Raises:
        TrainingConfigError: If ``step`` is outside ``[0, total_steps)``.
    """
    if total_steps < 1 or not 0 <= step < total_steps:
        raise TrainingConfigError(f"step must be in [0, {total_steps}), got {step}")
    peak = config.lr
    start = peak * config.start_lr_fraction
    end = peak * config.effective_final_lr_fraction
    warmup = config.effective_warmup_fraction
    if config.schedule == "onecycle":
        rise_end = warmup * total_steps - 1.0
        if rise_end > 0 and step <= rise_end:
            return _cosine_between(start, peak, step / rise_end)
        return _cosine_between(peak, end, (step - rise_end) / (total_steps - 1.0 - rise_end))
    warmup_steps = math.floor(warmup * total_steps)
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    return _cosine_between(peak, end, (step - warmup_steps) / (total_steps - warmup_steps))


def _cosine_between(first: float, last: float, progress: float) -> float:
    """Half-cosine interpolation from ``first`` (progress 0) to ``last`` (progress 1)."""
    return last + (first - last) * 0.5 * (1.0 + math.cos(math.pi * progress))
