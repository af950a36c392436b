"""Finalize a trial: retrain its point on train + validation for longer, measure it on test, store it.

The search trains each point at the job's fidelity and keeps the validation split out
for choosing between points. Once a point is chosen, validation has done its job: the
final model is trained again from the same seeded initialisation on the train and
validation splits together, for more epochs (twice the job's by default), with the same
per-layer pruning schedule (``LayerwisePruningSchedulePhase``), and measured on the
test split. The normalisation stays the search's (train-split statistics), so the
deployed pre-processing does not change.

The weights are stored as an Optuna artifact of the job's study and recorded in the
study user attribute ``finalized_trial_<number>`` (Optuna refuses to change a trial
once it is finished); exports then use them by default. Finalize writes to the study:
run it only while no search driver writes the same study (the service refuses a job
that is not finished; :func:`running_trials` tells a local study's state).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from sparse_nas.datasets import DatasetSplits, TensorSplit, load_dataset
from sparse_nas.export.errors import ExportError
from sparse_nas.export.trial import (
    FinalizedWeights,
    TrialSource,
    finalized_attr,
    load_trained_trial,
    study_id_of,
)
from sparse_nas.search.storage import artifact_store, open_storage
from sparse_nas.search.trial_runner import trial_seed

FINALIZE_EPOCH_FACTOR = 2
"""Default finalize epochs: this many times the job's ``training.epochs``."""
MAX_FINALIZE_EPOCHS = 10_000


class FinalizeError(ExportError, RuntimeError):
    """Retraining could not produce weights (it diverged); the message says how."""


def finalize_trial(source: TrialSource, number: int, *, epochs: int | None = None) -> FinalizedWeights:
    """Retrain trial ``number`` on train + validation, test it, and store the weights with the study.

    Deterministic for the trial at a fixed torch thread count (the caller sets it):
    seeded like the search's training of the point.

    Args:
        source: The job's study, artifacts and data directory.
        number: A trial with search weights (complete or stopped).
        epochs: Training epochs; None for :data:`FINALIZE_EPOCH_FACTOR` times the job's.

    Returns:
        The stored figures (artifact id, test accuracy, epochs, samples, seconds).

    Raises:
        ExportError: ``epochs`` is not an integer in [1, :data:`MAX_FINALIZE_EPOCHS`].
        TrialNotFoundError: No such study or trial.
        NoTrainedWeightsError: The trial was never trained (infeasible, failed, running).
        FinalizeError: Training diverged.
    """
    valid = isinstance(epochs, int) and not isinstance(epochs, bool) and 1 <= epochs <= MAX_FINALIZE_EPOCHS
    if epochs is not None and not valid:
        raise ExportError(f"epochs: must be an integer in [1, {MAX_FINALIZE_EPOCHS}], got {epochs!r}")
    import torch

    from sparse_nas.training import LayerwisePruningSchedulePhase, train

    trial = load_trained_trial(source, number, "search")
    spec = trial.spec
    config = spec.training.train_config(seed=trial_seed(spec.seed, trial.params))
    config = replace(config, epochs=epochs if epochs is not None else FINALIZE_EPOCH_FACTOR * config.epochs)
    splits = train_plus_validation(load_dataset(spec.dataset_config(), source.data_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = spec.build_search_space().build(trial.params)
    result = train(model, splits, config, phases=[LayerwisePruningSchedulePhase()], evaluate_test=True)
    if result.diverged:
        raise FinalizeError(
            f"finalizing trial {number} failed: training diverged ({result.aborted_reason}); "
            f"try fewer epochs than {config.epochs}"
        )
    buffer = io.BytesIO()
    torch.save(result.state_dict, buffer)
    storage = open_storage(source.storage_url)
    try:
        study = optuna.load_study(study_name=source.study_name, storage=storage)
        with tempfile.TemporaryDirectory(prefix="sparse-nas-finalized-") as tmp:
            path = Path(tmp) / f"trial-{number}-finalized-state_dict.pt"
            path.write_bytes(buffer.getvalue())
            artifact_id = upload_artifact(
                artifact_store=artifact_store(source.artifact_dir),
                file_path=str(path),
                study_or_trial=study,
                mimetype="application/x-pytorch",
            )
        finalized = FinalizedWeights(
            artifact_id=artifact_id,
            test_accuracy=float(result.test_accuracy),
            epochs=result.epochs_completed,
            train_samples=len(splits.train),
            train_seconds=result.train_seconds,
        )
        study_id = study_id_of(storage, source.study_name)
        storage.set_study_user_attr(study_id, finalized_attr(number), finalized.to_dict())
    finally:
        storage.engine.dispose()
    return finalized


def train_plus_validation(splits: DatasetSplits) -> DatasetSplits:
    """``splits`` with validation appended to train (validation kept too: the trainer reports on it)."""
    import torch

    merged = TensorSplit(torch.cat([splits.train.x, splits.val.x]), torch.cat([splits.train.y, splits.val.y]))
    return replace(splits, train=merged)


def running_trials(source: TrialSource) -> list[int]:
    """Numbers of the study's running or waiting trials: a search driver may be writing it."""
    storage = open_storage(source.storage_url)
    try:
        study_id = study_id_of(storage, source.study_name)
        states = (TrialState.RUNNING, TrialState.WAITING)
        return [t.number for t in storage.get_all_trials(study_id, deepcopy=False, states=states)]
    finally:
        storage.engine.dispose()
