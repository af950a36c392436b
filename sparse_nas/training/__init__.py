"""Training of candidate models: an in-memory trainer with schedules, phases and early stops.

Public surface:

* :func:`train` with :class:`TrainConfig` returns a :class:`TrainResult`; the per-epoch
  callback receives :class:`EpochReport`.
* :class:`BaseTrainingPhase` is the extension point for pruning and quantisation-aware
  phases; :class:`GradualMagnitudePruningPhase` implements Zhu & Gupta's schedule
  (:func:`cubic_sparsity`).
* :func:`learning_rate_at` is the schedule; :class:`RandomShiftAugment` an augmentation.
"""

from __future__ import annotations

from sparse_nas.training._augment import RandomShiftAugment
from sparse_nas.training._config import (
    MemoryFormatName,
    PrecisionName,
    ScheduleName,
    TrainConfig,
    TrainingConfigError,
)
from sparse_nas.training._phases import (
    BaseTrainingPhase,
    GradualMagnitudePruningPhase,
    LayerwisePruningSchedulePhase,
    cubic_sparsity,
)
from sparse_nas.training._schedules import learning_rate_at
from sparse_nas.training._trainer import AugmentFn, EpochReport, TrainResult, train

__all__ = [
    "AugmentFn",
    "BaseTrainingPhase",
    "EpochReport",
    "GradualMagnitudePruningPhase",
    "LayerwisePruningSchedulePhase",
    "MemoryFormatName",
    "PrecisionName",
    "RandomShiftAugment",
    "ScheduleName",
    "TrainConfig",
    "TrainResult",
    "TrainingConfigError",
    "cubic_sparsity",
    "learning_rate_at",
    "train",
]
