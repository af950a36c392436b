"""Request and response models of the REST API (``Base/Create/Public`` families).

A job is submitted as a :class:`~sparse_nas.spec.SearchJobSpec` (the engine's own model,
validated by the engine) and read back as :class:`JobPublic`. A device is submitted in
the device-file format (:class:`DeviceCreate`, validated by ``hw_models``) and read
back as :class:`DevicePublic`. Sizes are bytes, as everywhere below the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "cancelling", "cancelled", "succeeded", "failed"]
"""Lifecycle of a job (the service table's ``status``)."""

TrialStatusName = Literal["complete", "infeasible", "stopped", "failed", "interrupted", "running", "waiting"]
"""Status of one trial (docs/search.md, "Statuses")."""

EXAMPLE_JOB_SPEC: dict[str, Any] = {
    "name": "digits-tiny",
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
    "budgets": {"max_sram_bytes": 32768, "max_flash_bytes": 131072},
    "objectives": ["accuracy", "flash_bytes", "sram_bytes"],
    "strategy": "random",
    "n_trials": 3,
    "training": {"epochs": 1, "batch_size": 64},
    "execution": {"backend": "inprocess"},
}
"""A small job on the bundled digits set (seconds on a laptop): the OpenAPI request example."""


# --- errors ------------------------------------------------------------------------------


class ErrorItem(BaseModel):
    """One problem of a request: where it is (``loc``, starting with ``body``, ``query``,
    ``path`` or ``header``), what is wrong and its kind."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorPublic(BaseModel):
    """Every error response: a sentence, and one entry per problem (may be empty)."""

    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "invalid request",
                    "errors": [
                        {
                            "loc": ["body", "budgets", "max_sram_bytes"],
                            "msg": "must be positive, got -1",
                            "type": "budget_not_positive",
                        }
                    ],
                }
            ]
        }
    )


# --- jobs --------------------------------------------------------------------------------


class JobProgress(BaseModel):
    """Trials counted toward the job's budget so far."""

    trials_done: int
    n_trials: int
    fraction: float = Field(description="trials_done / n_trials, in [0, 1]")


class JobBase(BaseModel):
    """What identifies a job to people."""

    name: str | None = Field(default=None, description="The spec's name (a label; not used by the search)")


class JobPublic(JobBase):
    """A job as the API returns it."""

    id: str
    status: JobStatus
    study_name: str | None = Field(description="Optuna study holding the job's trials")
    idempotency_key: str | None
    progress: JobProgress
    best_accuracy: float | None = Field(description="Best validation accuracy of a complete, feasible trial")
    error: str | None = Field(description="Why the job failed, when it did")
    worker_id: str | None
    created_at: datetime
    updated_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    spec: dict[str, Any] = Field(description="The validated job spec, every field explicit")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f7c1e9a7d4c1f8f3e2d1c0b9a8f7e",
                    "name": "digits-tiny",
                    "status": "running",
                    "study_name": "job-0b6f7c1e9a7d4c1f8f3e2d1c0b9a8f7e",
                    "idempotency_key": "submit-2026-11-23-001",
                    "progress": {"trials_done": 1, "n_trials": 3, "fraction": 0.3333333333333333},
                    "best_accuracy": 0.84,
                    "error": None,
                    "worker_id": "host-1234",
                    "created_at": "2026-11-23T02:00:00Z",
                    "updated_at": "2026-11-23T02:00:05Z",
                    "started_at": "2026-11-23T02:00:01Z",
                    "finished_at": None,
                    "heartbeat_at": "2026-11-23T02:00:05Z",
                    "spec": EXAMPLE_JOB_SPEC,
                }
            ]
        }
    )


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobPublic]
    total: int = Field(description="Jobs matching the filter, over all pages")
    limit: int
    offset: int


# --- trials ------------------------------------------------------------------------------


class TrialPublic(BaseModel):
    """One trial of a job (``sparse_nas.search.TrialRecord``); costs in bytes, ms and MACs."""

    number: int
    status: TrialStatusName
    params: dict[str, Any]
    values: list[float | None] | None = Field(description="Objective values in the spec's order (accuracy first)")
    costs: dict[str, float | None]
    constraints: dict[str, float | None] = Field(description="cost / limit - 1 per limit; <= 0 is feasible")
    feasible: bool
    reason: str | None
    measured: dict[str, float | None]
    intermediate_accuracy: dict[str, float | None] = Field(description="Validation accuracy per epoch")
    artifact_id: str | None
    duration_s: float | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "number": 0,
                    "status": "complete",
                    "params": {"n_conv": 1, "conv0_channels": 8},
                    "values": [0.84, 20480.0, 9216.0],
                    "costs": {"flash_bytes": 20480.0, "sram_bytes": 9216.0, "macs": 41000.0, "latency_ms": 0.9},
                    "constraints": {"flash_bytes": -0.84, "sram_bytes": -0.72},
                    "feasible": True,
                    "reason": None,
                    "measured": {"val_accuracy": 0.84, "test_accuracy": 0.82, "train_seconds": 1.2},
                    "intermediate_accuracy": {"0": 0.84},
                    "artifact_id": "6c1f0e2a-0000-4000-8000-000000000000",
                    "duration_s": 1.5,
                }
            ]
        }
    )


class TrialsPublic(BaseModel):
    """A page of trials in number order, for incremental polling with ``?after=``."""

    items: list[TrialPublic]
    next_after: int = Field(
        description=(
            "Pass as ?after= to continue. It never moves past a trial that is still running or "
            "waiting, so that trial comes back, finished, in a later poll"
        )
    )
    has_more: bool = Field(description="More trials follow this page right now")
    limit: int


class ParetoPublic(BaseModel):
    """A job's Pareto front and what it is measured against (``SearchResults``)."""

    objectives: list[str]
    reference_point: dict[str, float] = Field(description="Hypervolume reference: accuracy 0, each cost its limit")
    limits: dict[str, float]
    hypervolume: float = Field(description="Normalised to [0, 1] (docs/search.md)")
    hypervolume_history: list[dict[str, Any]]
    pareto_front: list[TrialPublic] = Field(description="Most accurate first")
    best_per_budget: dict[str, Any]
    counts: dict[str, int] = Field(description="Trials per status")


# --- catalogue ---------------------------------------------------------------------------


class DeviceBase(BaseModel):
    """A microcontroller in the device-file format (docs/devices.md)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    display_name: str
    core: str
    dsp: bool
    fpu: bool
    clock_hz: float
    flash_bytes: int
    sram_bytes: int
    sram_overhead_bytes: int
    cycles_per_mac: dict[str, float]
    cycles_per_output: dict[str, float]
    cycles_per_element: dict[str, float]
    op_overhead_cycles: float
    active_power_mw: float


class DeviceCreate(DeviceBase):
    """A custom device to register; validated by ``hw_models.device_from_dict``."""

    sources: dict[str, str] = Field(default_factory=dict)
    notes: str = ""

    model_config = ConfigDict(extra="forbid")


class DevicePublic(DeviceBase):
    """A device of the catalogue (packaged or registered)."""

    sources: dict[str, str]
    notes: str
    custom: bool = Field(description="Registered through the API (this process only), not packaged")


class OptionPublic(BaseModel):
    """A user-settable option of a search space or dataset."""

    name: str
    default: Any
    description: str
    choices: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None


class ParameterPublic(BaseModel):
    """One searched parameter: an Optuna distribution."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None


class SearchSpacePublic(BaseModel):
    """A model family with its options and its searched parameters (with default options)."""

    name: str
    description: str
    options: list[OptionPublic]
    example_dataset: str | None = Field(description="Dataset whose input shape the parameters are listed for")
    example_input_shape: list[int] | None
    parameters: dict[str, ParameterPublic]
    fits_datasets: list[str] = Field(description="Datasets (default options) this family accepts")


class DatasetPublic(BaseModel):
    """A registered dataset (``sparse_nas.datasets.dataset_info``)."""

    name: str
    description: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    needs_data_dir: bool
    expected_files: list[str]
    default_options: dict[str, Any]
    options: list[OptionPublic]
    downloadable: bool
    source: str
    license: str


# --- health ------------------------------------------------------------------------------


class HealthPublic(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]


# --- OpenAPI helpers -----------------------------------------------------------------------

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "Missing or wrong bearer token (when the service has one)"},
    404: {"model": ErrorPublic, "description": "No such job (or trial)"},
    409: {"model": ErrorPublic, "description": "The job's status does not allow this, or the name exists"},
    413: {"model": ErrorPublic, "description": "Request body larger than the setting max_body_bytes"},
    422: {"model": ErrorPublic, "description": "Bad input; each entry of errors names its field"},
}
"""Error responses documented on every /api route."""


def json_body_schema(name: str, examples: dict[str, dict[str, Any]], description: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a required JSON body by its component ``name``, with examples.

    Routes whose body the engine validates read it raw, so FastAPI does not see its
    model; ``api.app`` adds the model's schema to the components under ``name``.

    Args:
        name: Component name of the body's schema.
        examples: OpenAPI examples by name, each ``{"summary", "value"}``.
        description: What the body is.
    """
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}, "examples": examples}},
        }
    }


# --- dashboard ---------------------------------------------------------------------------


class LayerWeightPublic(BaseModel):
    """One weight of a layer and how it is stored (docs/ir.md, ``WeightSpec``)."""

    name: str
    shape: list[int]
    bits: int
    structure: dict[str, Any] = Field(description="kind (dense, sparse, low_rank, kronecker, ...) and its numbers")


class LayerCostPublic(BaseModel):
    """Cost of one op of a trial's network (``hw_models.LayerCostReport``) and its compression."""

    name: str
    op: str
    fused: list[str]
    output_shape: list[int]
    params: int
    nonzero_params: int
    model_bytes: int
    macs: int
    output_bytes: int
    scratch_bytes: int
    working_memory_bytes: int
    cycles: float
    latency_ms: float
    weights: list[LayerWeightPublic]
    dense_model_bytes: int = Field(description="model_bytes of the same layer with dense weights at the same bits")
    compression_ratio: float | None = Field(description="dense_model_bytes / model_bytes; None for 0 bytes")


class TrialLayersPublic(BaseModel):
    """A trial's planned network costed layer by layer on the job's device and runtime."""

    number: int
    device: str
    runtime: str
    params: int
    nonzero_params: int
    model_bytes: int
    runtime_code_bytes: int
    flash_bytes: int
    arena_bytes: int
    persistent_bytes: int
    scratch_bytes: int
    sram_overhead_bytes: int
    sram_bytes: int
    macs: int
    latency_ms: float
    energy_mj: float
    device_flash_bytes: int
    device_sram_bytes: int
    layers: list[LayerCostPublic]


# --- export ------------------------------------------------------------------------------


class FinalizePublic(BaseModel):
    """A trial's weights retrained on train + validation (``POST .../finalize``); exports use them."""

    job_id: str
    number: int
    artifact_id: str
    test_accuracy: float
    epochs: int
    train_samples: int
    train_seconds: float
