"""Multi-fidelity early stopping on validation accuracy, ASHA-like.

Asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel
Hyperparameter Tuning", arXiv 1810.05934) keeps a trial going past a rung only when its
validation accuracy there is in the top ``1 / reduction_factor`` of the accuracies
recorded at that rung. Rungs sit at ``min_epochs * reduction_factor**k`` epochs, below
the full fidelity.

Trials here run to completion in a worker that does not talk to the driver, so the
bar of every rung is computed when a trial is launched, from the epoch histories of
the trials finished by then, and shipped with the task (:attr:`TrialTask.stop_below`).
The bars are therefore a little staler than in ASHA proper (trials running alongside
do not raise them), never stricter; a rung needs ``reduction_factor`` recorded trials
before it stops anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REDUCTION_FACTOR = 3


def rung_epochs(min_epochs: int, epochs: int, reduction_factor: int = REDUCTION_FACTOR) -> list[int]:
    """Epochs after which a trial may be stopped: ``min_epochs * eta**k < epochs``."""
    if min_epochs < 1 or reduction_factor < 2:
        raise ValueError(f"need min_epochs >= 1 and reduction_factor >= 2, got {min_epochs}, {reduction_factor}")
    rungs = []
    epoch = min_epochs
    while epoch < epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs


def stop_below(
    histories: Sequence[Sequence[float]], rungs: Sequence[int], reduction_factor: int = REDUCTION_FACTOR
) -> dict[int, float]:
    """Each rung's bar: the lowest accuracy still in the top ``1 / reduction_factor`` there.

    Args:
        histories: Validation accuracy after each epoch, one sequence per finished trial
            (complete or stopped).
        rungs: From :func:`rung_epochs`.

    Returns:
        ``{epoch: bar}`` for the rungs with at least ``reduction_factor`` recorded trials.
    """
    bars = {}
    for epoch in rungs:
        recorded = sorted((h[epoch - 1] for h in histories if len(h) >= epoch), reverse=True)
        if len(recorded) >= reduction_factor:
            keep = max(1, math.floor(len(recorded) / reduction_factor))
            bars[epoch] = recorded[keep - 1]
    return bars
