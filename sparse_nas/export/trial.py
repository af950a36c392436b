"""A trained trial read back from its job's study: point, figures and weights (search or finalized).

A job's trials live in one Optuna study (docs/search.md). A COMPLETE or stopped trial
has its trained ``state_dict`` as an artifact (``weights_artifact_id``); a trial that
was finalized (:mod:`sparse_nas.export.finalize`) also has retrained weights, recorded
on the study (Optuna refuses to change a finished trial) under
``finalized_trial_<number>``. :func:`load_trained_trial` reads either, and says why
when a trial has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage

from sparse_nas.export.errors import ExportError, NoTrainedWeightsError, TrialNotFoundError
from sparse_nas.search.records import ARTIFACT_ATTR, SPEC_ATTR, TrialRecord, to_record
from sparse_nas.search.storage import artifact_store, load_weights, open_storage
from sparse_nas.spec import SearchJobSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

WeightsChoice = Literal["auto", "search", "finalized"]
"""Which weights to read: ``finalized`` when the trial has them else ``search`` (``auto``), or one of them."""
WEIGHTS_CHOICES: tuple[str, ...] = get_args(WeightsChoice)
WeightsKind = Literal["search", "finalized"]

FINALIZED_ATTR_PREFIX = "finalized_trial_"
"""Study user attribute ``finalized_trial_<number>``: the finalized weights of that trial (see
:class:`FinalizedWeights`). On the study because Optuna refuses to change a finished trial."""


def finalized_attr(number: int) -> str:
    """The study user attribute holding trial ``number``'s finalized weights."""
    return f"{FINALIZED_ATTR_PREFIX}{int(number)}"


@dataclass(frozen=True)
class TrialSource:
    """Where a job's study and trained weights are.

    Attributes:
        storage_url: SQLAlchemy URL of the study database.
        study_name: The job's study.
        artifact_dir: The artifact store the job wrote its weights to.
        data_dir: Where the job's dataset is read from (not needed for ``digits``).
        spec: The job's spec; None reads it from the study (the engine stores it there).
    """

    storage_url: str
    study_name: str
    artifact_dir: Path
    data_dir: Path | None = None
    spec: SearchJobSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifact_dir", Path(self.artifact_dir))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))


@dataclass(frozen=True)
class FinalizedWeights:
    """A trial's weights retrained on train + validation (the study attribute's JSON form).

    Attributes:
        artifact_id: Optuna artifact id of the retrained ``state_dict`` (a study artifact).
        test_accuracy: Test accuracy of those weights.
        epochs: Epochs of the retraining.
        train_samples: Samples trained on (the train and validation splits together).
        train_seconds: Wall time of the retraining.
    """

    artifact_id: str
    test_accuracy: float
    epochs: int
    train_samples: int
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact_id": self.artifact_id,
            "test_accuracy": self.test_accuracy,
            "epochs": self.epochs,
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinalizedWeights:
        return cls(
            artifact_id=str(data["artifact_id"]),
            test_accuracy=float(data["test_accuracy"]),
            epochs=int(data["epochs"]),
            train_samples=int(data["train_samples"]),
            train_seconds=float(data["train_seconds"]),
        )


@dataclass(frozen=True)
class TrainedTrial:
    """One trial with the weights chosen for export.

    Attributes:
        study_name: The job's study.
        record: The stored trial (status, point, planned costs, measured figures).
        spec: The job's spec.
        weights: ``search`` (trained by the search) or ``finalized`` (retrained).
        artifact_id: The artifact the weights were read from.
        state_dict: The weights, for the model ``spec.build_search_space().build(record.params)``.
        finalized: The trial's finalized weights' figures, when it has them (whichever
            ``weights`` were chosen).
    """

    study_name: str
    record: TrialRecord
    spec: SearchJobSpec
    weights: WeightsKind
    artifact_id: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    finalized: FinalizedWeights | None = None

    @property
    def number(self) -> int:
        return self.record.number

    @property
    def params(self) -> dict[str, Any]:
        return self.record.params

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy of the chosen weights; None for finalized ones (validation was trained on)."""
        return self.record.measured.get("val_accuracy") if self.weights == "search" else None

    @property
    def test_accuracy(self) -> float | None:
        """Stored test accuracy of the chosen weights."""
        if self.weights == "finalized" and self.finalized is not None:
            return self.finalized.test_accuracy
        return self.record.measured.get("test_accuracy")

    def build_model(self) -> nn.Module:
        """The trained model in eval mode: the point built by its search space, weights loaded."""
        model = self.spec.build_search_space().build(self.params)
        model.load_state_dict(self.state_dict)
        return model.eval()


def load_trained_trial(source: TrialSource, number: int, weights: WeightsChoice = "auto") -> TrainedTrial:
    """Read trial ``number`` of the source's study with its weights.

    Raises:
        TrialNotFoundError: The study does not exist or has no such trial.
        NoTrainedWeightsError: The trial has no weights of the kind asked for (the
            message says why: infeasible, failed, still running, not finalized).
        ExportError: ``weights`` is not one of :data:`WEIGHTS_CHOICES`, or the study
            holds no job spec and the source gives none.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ExportError(f"weights: unknown choice {weights!r}; valid: {', '.join(WEIGHTS_CHOICES)}")
    storage = open_storage(source.storage_url)
    try:
        return _load(storage, source, number, weights)
    finally:
        storage.engine.dispose()


def _load(storage: BaseStorage, source: TrialSource, number: int, weights: WeightsChoice) -> TrainedTrial:
    study_id = study_id_of(storage, source.study_name)
    record = to_record(storage.get_trial(trial_id_of(storage, study_id, source.study_name, number)))
    finalized = read_finalized(storage, study_id, number)
    kind: WeightsKind = "finalized" if weights == "finalized" or (weights == "auto" and finalized) else "search"
    if kind == "finalized":
        if finalized is None:
            raise NoTrainedWeightsError(
                f"trial {number} of {source.study_name!r} has not been finalized (retrained on train + validation); "
                "finalize it first (`sparse-nas finalize`, or POST .../finalize), or export weights=search"
            )
        artifact_id = finalized.artifact_id
    elif record.artifact_id is None:
        raise _no_weights(record, source.study_name)
    else:
        artifact_id = record.artifact_id
    spec = source.spec if source.spec is not None else _stored_spec(storage, study_id, source.study_name)
    try:
        state_dict = load_weights(artifact_store(source.artifact_dir), artifact_id)
    except ArtifactNotFound as exc:
        raise NoTrainedWeightsError(
            f"trial {number} of {source.study_name!r}: its {kind} weights (artifact {artifact_id}) are missing from "
            f"the artifact store {str(source.artifact_dir)!r}; was the job run with another artifact directory?"
        ) from exc
    return TrainedTrial(
        study_name=source.study_name,
        record=record,
        spec=spec,
        weights=kind,
        artifact_id=artifact_id,
        state_dict=state_dict,
        finalized=finalized,
    )


def study_id_of(storage: BaseStorage, study_name: str) -> int:
    """The study's id (TrialNotFoundError when there is no such study)."""
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        raise TrialNotFoundError(
            f"study {study_name!r} does not exist: no trial of it has run, or the name is wrong"
        ) from None


def trial_id_of(storage: BaseStorage, study_id: int, study_name: str, number: int) -> int:
    """The storage id of trial ``number`` (TrialNotFoundError naming the valid range)."""
    try:
        return storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
    except KeyError:
        count = storage.get_n_trials(study_id)
        valid = f"trials 0-{count - 1}" if count else "no trials yet"
        raise TrialNotFoundError(f"{study_name!r} has no trial {number}; it has {valid}") from None


def read_finalized(storage: BaseStorage, study_id: int, number: int) -> FinalizedWeights | None:
    """Trial ``number``'s finalized weights, or None when it was not finalized."""
    stored = storage.get_study_user_attrs(study_id).get(finalized_attr(number))
    return FinalizedWeights.from_dict(stored) if stored is not None else None


def _stored_spec(storage: BaseStorage, study_id: int, study_name: str) -> SearchJobSpec:
    stored = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if stored is None:
        raise ExportError(f"study {study_name!r} holds no job spec ({SPEC_ATTR!r}): it was not written by sparse-nas")
    return SearchJobSpec.model_validate(stored)


def _no_weights(record: TrialRecord, study_name: str) -> NoTrainedWeightsError:
    why = {
        "infeasible": "it breaks the job's limits and was never trained",
        "failed": "its training failed",
        "interrupted": "its search driver stopped before it finished (a retry was queued)",
        "running": "it is still training; export it once it has finished",
        "waiting": "it has not started yet",
    }.get(record.status, f"it is {record.status} but has no weights artifact ({ARTIFACT_ATTR!r})")
    reason = f": {record.reason}" if record.reason else ""
    return NoTrainedWeightsError(
        f"trial {record.number} of {study_name!r} has no trained weights: {why}{reason}; "
        "export a complete trial (one on the Pareto front)"
    )
