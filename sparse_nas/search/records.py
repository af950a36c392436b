"""How a search trial is stored in the Optuna study, and read back as a :class:`TrialRecord`.

Every trial of a job is one Optuna trial. Its values are the objectives in the spec's
order (accuracy first). Its user attributes hold the planned hardware costs of the
point (``flash_bytes``, ``sram_bytes``, ``macs``, ``latency_ms``, ``energy_mj``), the
trial's :data:`STATUS_ATTR` and, when it did not train to the end, :data:`REASON_ATTR`;
a trial derived by the differentiable search also holds :data:`SOURCE_ATTR` and :data:`DNAS_ATTRS`.
Its constraints (``trial.set_constraint``) are one per limit of the job, ``cost / limit
- 1``; zero or less is feasible.

=================  =================  ===============================================
status             Optuna state       meaning
=================  =================  ===============================================
``complete``       COMPLETE           trained for the full fidelity; values measured
``infeasible``     COMPLETE           breaks a limit; never trained. Its accuracy value
                                      is 0.0 (nothing deployable was trained) so that
                                      constrained samplers learn the infeasible region;
                                      it is never on a Pareto front
``stopped``        PRUNED             stopped early on validation accuracy (ASHA-like);
                                      intermediate values kept, off the Pareto front
``failed``         FAIL               training raised or diverged; counts as a trial
``interrupted``    FAIL               its driver died mid-trial, or its Ray worker or
                                      node was lost; the same parameters were enqueued
                                      again, so it does not count (a point lost
                                      ``MAX_LOST_RETRIES`` times in a row is ``failed``)
=================  =================  ===============================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from optuna.trial import FrozenTrial, TrialState

from search_spaces.families import COST_METRICS

TrialStatus = Literal["complete", "infeasible", "stopped", "failed", "interrupted", "running", "waiting"]

STATUS_ATTR = "status"
REASON_ATTR = "reason"
RETRY_OF_ATTR = "retry_of"
"""On a re-enqueued trial: the number of the interrupted trial it repeats."""
LOST_COUNT_ATTR = "lost_count"
"""On a re-enqueued trial: how many times in a row its point's worker was lost."""
MAX_LOST_RETRIES = 2
"""A point whose worker is lost this many times in a row is recorded ``failed``, not run again
(a point that kills its worker, e.g. by running out of memory, must not loop forever)."""
SUGGEST_SECONDS_ATTR = "suggest_seconds"
"""Driver time to ask the sampler for the point and store it (the sampler's cost)."""
DRIVER_SECONDS_ATTR = "driver_seconds"
"""Driver time before launch: the suggestion plus exact costing and storing costs and constraints."""
TRAIN_ATTRS = (
    "val_accuracy",
    "test_accuracy",
    "train_seconds",
    "epochs_completed",
    "nonzero_params",
    "worker_seconds",
    "worker_pid",
    "worker_started_at",
    SUGGEST_SECONDS_ATTR,
    DRIVER_SECONDS_ATTR,
)
"""Measured per trial (``TrialRecord.measured``): the training figures are absent on trials
that were not trained; ``worker_*`` say where and when the trial ran (``worker_seconds``:
the whole task in the worker); the driver's timings are on every trial."""
SOURCE_ATTR = "source"
"""Where a trial's point came from: ``"dnas"`` for an architecture derived by the
differentiable search (``dnas``, ``hybrid``); absent when the job's sampler suggested it."""
DNAS_SOURCE = "dnas"
DNAS_PENALTY_ATTR = "dnas_penalty"
DNAS_INDEX_ATTR = "dnas_sweep_index"
DNAS_SEARCH_SECONDS_ATTR = "dnas_search_seconds"
DNAS_ATTRS = (DNAS_PENALTY_ATTR, DNAS_INDEX_ATTR, DNAS_SEARCH_SECONDS_ATTR)
"""On a DNAS trial (``TrialRecord.measured``): its penalty strength, its index in the sweep and, on
the first trial of a search, the search's seconds (that trial's duration includes them)."""
CARRIED_ATTRS = (SOURCE_ATTR, DNAS_PENALTY_ATTR, DNAS_INDEX_ATTR)
"""User attributes a re-enqueued trial keeps from the interrupted trial it repeats."""
ARTIFACT_ATTR = "weights_artifact_id"
"""Optuna artifact id of the trained ``state_dict`` (complete and stopped trials)."""
SPEC_ATTR = "sparse_nas_spec"
"""Study user attribute: the job spec as JSON (resume checks it is the same job)."""

INFEASIBLE_ACCURACY = 0.0
"""The accuracy value told for an untrained, infeasible point (see the table above)."""

COUNTED_STATUSES = frozenset({"complete", "infeasible", "stopped", "failed"})
"""Statuses that use up the job's ``n_trials``."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the engine, the results and the API see it (JSON-ready via ``to_dict``)."""

    number: int
    status: TrialStatus
    params: dict[str, Any]
    values: tuple[float, ...] | None
    costs: dict[str, float]
    constraints: dict[str, float]
    feasible: bool
    reason: str | None = None
    measured: dict[str, float] = field(default_factory=dict)
    intermediate_accuracy: dict[int, float] = field(default_factory=dict)
    artifact_id: str | None = None
    duration_s: float | None = None
    source: str | None = None

    @property
    def accuracy(self) -> float | None:
        """Validation accuracy of a trained trial (the first objective); None otherwise."""
        if self.status not in ("complete", "stopped"):
            return None
        return self.measured.get("val_accuracy")

    @property
    def work_seconds(self) -> float:
        """Seconds of work the trial cost: the driver's (suggestion or search, costing) plus the worker's.

        Not the trial's duration, which runs from its creation to its tell: a trial
        prepared while another one trains (the Ray executor's look-ahead) would count
        that other trial's training too. The trial's duration stands in when neither
        part was recorded (trials stored by older versions).
        """
        driver, worker = self.measured.get(DRIVER_SECONDS_ATTR), self.measured.get("worker_seconds")
        if driver is None and worker is None:
            return self.duration_s or 0.0
        return (driver or 0.0) + (worker or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "status": self.status,
            "params": self.params,
            "values": list(self.values) if self.values is not None else None,
            "costs": self.costs,
            "constraints": self.constraints,
            "feasible": self.feasible,
            "reason": self.reason,
            "measured": self.measured,
            "intermediate_accuracy": {str(k): v for k, v in self.intermediate_accuracy.items()},
            "artifact_id": self.artifact_id,
            "duration_s": self.duration_s,
            "source": self.source,
        }


def trial_status(trial: FrozenTrial) -> TrialStatus:
    """The engine's status of an Optuna trial (see the module table)."""
    stored = trial.user_attrs.get(STATUS_ATTR)
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "waiting"
    if trial.state == TrialState.PRUNED:
        return "stopped"
    if trial.state == TrialState.FAIL:
        return "interrupted" if stored == "interrupted" else "failed"
    return "infeasible" if stored == "infeasible" else "complete"


def to_record(trial: FrozenTrial) -> TrialRecord:
    """Read one stored trial."""
    attrs = trial.user_attrs
    constraints = {key: float(value) for key, value in trial.constraints.items()}
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRecord(
        number=trial.number,
        status=trial_status(trial),
        params=dict(trial.params),
        values=tuple(float(v) for v in trial.values) if trial.values is not None else None,
        costs={metric: float(attrs[metric]) for metric in COST_METRICS if metric in attrs},
        constraints=constraints,
        feasible=all(value <= 0.0 for value in constraints.values()),
        reason=attrs.get(REASON_ATTR),
        measured={key: float(attrs[key]) for key in TRAIN_ATTRS + DNAS_ATTRS if attrs.get(key) is not None},
        intermediate_accuracy={int(step): float(value) for step, value in trial.intermediate_values.items()},
        artifact_id=attrs.get(ARTIFACT_ATTR),
        duration_s=duration,
        source=attrs.get(SOURCE_ATTR),
    )


def to_records(trials: Sequence[FrozenTrial]) -> list[TrialRecord]:
    """Read many stored trials, in trial-number order."""
    return [to_record(t) for t in sorted(trials, key=lambda t: t.number)]


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether the trial uses up one of the job's ``n_trials``."""
    return trial_status(trial) in COUNTED_STATUSES


def objective_values(objectives: Sequence[str], accuracy: float, costs: Mapping[str, float]) -> list[float]:
    """The values to tell, in the spec's objective order."""
    return [accuracy if name == "accuracy" else float(costs[name]) for name in objectives]
