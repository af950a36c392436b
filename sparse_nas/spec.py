"""The job spec: :class:`SearchJobSpec`, the one document a user submits.

A spec names a dataset, a search space and its options, a target device and runtime,
hardware budgets, objectives, a search strategy with its trial budget, the training
fidelity of each trial and where trials run. It arrives as JSON over REST or as a YAML
or JSON file (``sparse-nas search SPEC.yaml``) and is validated completely on
construction, before anything is loaded or trained: every error is a pydantic
``ValidationError`` whose ``loc`` is the offending field and whose message says what
would be valid. A search space that cannot meet the budgets on the device at all is
rejected with the smallest costs it can reach (``docs/job_spec.md``).

Importing this module does not import torch; validating a spec does (the search space
is instantiated to check its options).

Example:
    >>> spec = SearchJobSpec.model_validate({
    ...     "dataset": {"name": "digits"},
    ...     "search_space": {"name": "sparse_cnn"},
    ...     "device": "stm32f446re",
    ...     "budgets": {"max_sram_bytes": 65536},
    ... })
    >>> spec.directions()
    ['maximize', 'minimize', 'minimize']
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from hw_models import DeviceSpec, InvalidDeviceError, RuntimeProfile, device_from_dict, get_device, list_devices
from hw_models.runtimes import RUNTIMES, get_runtime
from sparse_nas.datasets import DatasetConfig, DatasetError, available_datasets, dataset_info, input_shape_for
from sparse_nas.errors import SparseNASError

if TYPE_CHECKING:
    from search_spaces.families import BaseSearchSpace
    from sparse_nas.training import TrainConfig

StrategyName = Literal["mobo", "gp", "nsga2", "tpe", "random", "dnas", "hybrid"]
"""Search strategies; each writes to the job's Optuna study (``dnas`` and ``hybrid`` train a supernet first)."""

DNAS_STRATEGIES: tuple[str, ...] = ("dnas", "hybrid")
"""Strategies that run the differentiable search (``hybrid`` then continues with ``mobo``)."""

ObjectiveName = Literal["accuracy", "flash_bytes", "sram_bytes", "macs", "latency_ms"]
"""Objectives: validation accuracy (maximised) and hardware costs (minimised)."""

BackendName = Literal["inprocess", "ray"]
"""Where trials run: in the driver process, or as Ray tasks."""

STRATEGIES: tuple[str, ...] = get_args(StrategyName)
ACCURACY = "accuracy"
COST_OBJECTIVES: tuple[str, ...] = tuple(name for name in get_args(ObjectiveName) if name != ACCURACY)
DEFAULT_OBJECTIVES: tuple[str, ...] = (ACCURACY, "flash_bytes", "sram_bytes")
MAX_OBJECTIVES = 4
DEFAULT_INITIAL_TRIALS = 10

Count = Annotated[int, Strict()]
"""An integer that must be given as one (``true`` and ``4.0`` are refused)."""

# Upper bounds: far beyond any sensible job, they keep a typo (or a fuzzer) from
# queueing a job that can never end, or a number the database or numpy cannot hold.
MAX_SEED = 2**32 - 1
"""numpy's and the samplers' seed range."""
MAX_TRIALS = 100_000
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 1_048_576
MAX_CONCURRENCY = 4096
MAX_CPUS_PER_TRIAL = 1024
MAX_BUDGET_BYTES = 2**40
"""1 TiB: no microcontroller comes near it; use no budget instead."""
MAX_BUDGET_LATENCY_MS = 86_400_000.0
"""One day."""
MAX_SUBSET = 2**31 - 1

_MULTI_FIDELITY_FIELDS = frozenset({"early_stopping", "min_epochs"})


class SpecFileError(SparseNASError, ValueError):
    """A spec file that cannot be read or parsed (missing, bad suffix, bad JSON or YAML)."""


def _line(loc: Sequence[str | int], message: str, value: Any, kind: str = "value_error") -> InitErrorDetails:
    # No context is passed, so pydantic leaves braces in the message as they are.
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=tuple(loc), input=value)


def _raise(title: str, lines: list[InitErrorDetails]) -> None:
    # A ValidationError raised in a validator keeps these locations, prefixed by the
    # location of the model being validated.
    if lines:
        raise ValidationError.from_exception_data(title, lines)


def _names(values: Sequence[str]) -> str:
    return ", ".join(values)


class _SpecModel(BaseModel):
    """Frozen, and unknown fields are errors that name them and list the valid ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            valid = list(cls.model_fields)
            _raise(
                cls.__name__,
                [
                    _line((key,), f"unknown field {key!r}; valid fields: {_names(valid)}", data[key], "extra_forbidden")
                    for key in data
                    if key not in cls.model_fields
                ],
            )
        return data


# --- dataset --------------------------------------------------------------------------


class DatasetSpec(_SpecModel):
    """Which dataset a job trains on; maps 1:1 onto :class:`DatasetConfig` (with the job's seed).

    Attributes:
        name: A registered dataset (:func:`sparse_nas.datasets.available_datasets`).
        options: Dataset-specific options (``GET /api/datasets`` lists them); some
            change the input shape, e.g. fsdd's ``layout: sequence`` gives ``(49, 10)``.
        val_fraction: Share of the training set held out, stratified, for validation
            accuracy (the search objective); in ``[0, 1)``.
        train_subset: Train on only this many samples (stratified); ``None`` keeps all.
        binary_groups: Two disjoint groups of class indices for a SpArSe-style binary
            task (first group label 0, second label 1, other classes dropped).
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = 0.1
    train_subset: Count | None = Field(default=None, le=MAX_SUBSET)
    binary_groups: tuple[tuple[Count, ...], tuple[Count, ...]] | None = None

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in available_datasets():
            raise PydanticCustomError(
                "unknown_dataset", f"unknown dataset {name!r}; valid: {_names(available_datasets())}"
            )
        return name

    @model_validator(mode="after")
    def _valid_config(self) -> DatasetSpec:
        try:
            self.dataset_config(seed=0)
        except DatasetError as exc:
            _raise(type(self).__name__, [_dataset_error_line(str(exc), self)])
        return self

    def dataset_config(self, seed: int) -> DatasetConfig:
        """The :class:`DatasetConfig` of this dataset, split with ``seed``."""
        return DatasetConfig(
            name=self.name,
            seed=seed,
            val_fraction=self.val_fraction,
            train_subset=self.train_subset,
            binary_groups=self.binary_groups,
            options=dict(self.options),
        )

    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape with these options (torch layout), without loading data."""
        return input_shape_for(self.name, self.options)

    def num_classes(self) -> int:
        """Number of classes the model predicts: 2 for a binary task."""
        return 2 if self.binary_groups is not None else dataset_info(self.name).num_classes


def _dataset_error_line(message: str, spec: DatasetSpec) -> InitErrorDetails:
    """Locate a :class:`DatasetError` message of DatasetConfig or the option checks."""
    option = re.match(r"options\['(\w+)'\]", message)
    if option:
        return _line(("options", option[1]), message, spec.options.get(option[1]))
    if message.startswith("unknown option"):
        return _line(("options",), message, spec.options)
    field = re.match(r"DatasetConfig\.(\w+) (.*)", message, re.DOTALL)
    if field and field[1] in DatasetSpec.model_fields:
        return _line((field[1],), field[2], getattr(spec, field[1]))
    return _line((), message, spec.name)


# --- search space ----------------------------------------------------------------------


def _search_space_names() -> list[str]:
    # Imported here: the families import torch, which the schema alone must not pay for.
    from search_spaces.families import search_space_names

    return search_space_names()


class SearchSpaceSpec(_SpecModel):
    """Which model family is searched, and its options.

    Attributes:
        name: A registered family (``search_spaces.families.search_space_names()``).
        options: The family's options (``GET /api/search-spaces`` lists them); checked
            by instantiating the family for the dataset's input shape and classes.
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        valid = _search_space_names()
        if name not in valid:
            raise PydanticCustomError("unknown_search_space", f"unknown search space {name!r}; valid: {_names(valid)}")
        return name


# --- budgets ------------------------------------------------------------------------


class BudgetsSpec(_SpecModel):
    """Hardware limits every searched network must meet; ``None`` sets no budget.

    The device's own flash and SRAM always apply as well: a budget above them is
    allowed, and the device's figure is then the binding limit (:meth:`SearchJobSpec.limits`).

    Attributes:
        max_flash_bytes: Model plus runtime code in flash, bytes.
        max_sram_bytes: Peak SRAM (the runtime's arena, plus its overheads), bytes.
        max_latency_ms: Inference latency at the device's clock, milliseconds.
    """

    max_flash_bytes: Count | None = Field(default=None, le=MAX_BUDGET_BYTES)
    max_sram_bytes: Count | None = Field(default=None, le=MAX_BUDGET_BYTES)
    max_latency_ms: float | None = Field(default=None, le=MAX_BUDGET_LATENCY_MS)

    @field_validator("max_flash_bytes", "max_sram_bytes", "max_latency_ms")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise PydanticCustomError(
                "budget_not_positive",
                f"must be positive, got {value!r}; leave it out (or null) for no budget beyond the device's own",
            )
        return value


# --- training -------------------------------------------------------------------------


class TrainingSpec(_SpecModel):
    """How each trial's model is trained: :class:`sparse_nas.training.TrainConfig` (all its
    fields but ``seed``, with its defaults and its validation) plus multi-fidelity settings.

    Attributes:
        epochs: Passes over the training split per trial (the full fidelity).
        batch_size: Samples per optimiser step.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW decoupled weight decay of conv/linear weights.
        betas: AdamW moment coefficients.
        schedule: ``"cosine"`` or ``"onecycle"``.
        warmup_fraction: Fraction of steps rising to ``lr``; ``None``: the schedule's default.
        start_lr_fraction: Learning rate at step 0, as a fraction of ``lr``.
        final_lr_fraction: Final learning rate as a fraction of ``lr``; ``None``: the
            schedule's default.
        label_smoothing: Cross-entropy label smoothing in ``[0, 1)``.
        grad_clip_norm: Global gradient-norm clip; ``None`` disables.
        eval_batch_size: Samples per forward pass when evaluating.
        drop_last: Drop each epoch's last incomplete batch.
        divergence_loss_factor: Abort a trial whose loss exceeds this multiple of its first.
        check_every_steps: Steps between checks for NaN, inf or divergence.
        memory_format: ``"channels_last"`` or ``"contiguous"``.
        precision: ``"fp32"`` or ``"bf16-mixed"``.
        early_stopping: Stop unpromising trials early on validation accuracy
            (ASHA-like); stopped trials are kept out of the Pareto front.
        min_epochs: Epochs every trial trains before it may be stopped early.
    """

    epochs: Count = Field(default=10, le=MAX_EPOCHS)
    batch_size: Count = Field(default=128, le=MAX_BATCH_SIZE)
    lr: float = 3e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_fraction: float | None = None
    start_lr_fraction: float = 0.04
    final_lr_fraction: float | None = None
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    eval_batch_size: Count = Field(default=2048, le=MAX_BATCH_SIZE)
    drop_last: bool = True
    divergence_loss_factor: float = 10.0
    check_every_steps: Count = 50
    memory_format: str = "channels_last"
    precision: str = "fp32"
    early_stopping: bool = False
    min_epochs: Count = Field(default=1, le=MAX_EPOCHS)

    @model_validator(mode="after")
    def _valid_for_trainer(self) -> TrainingSpec:
        from sparse_nas.training import TrainingConfigError

        lines = []
        try:
            self.train_config(seed=0)
        except TrainingConfigError as exc:
            field = re.match(r"TrainConfig\.(\w+) (.*)", str(exc), re.DOTALL)
            if field and field[1] in type(self).model_fields:
                lines.append(_line((field[1],), field[2], getattr(self, field[1])))
            else:
                lines.append(_line((), str(exc), None))
        if not 1 <= self.min_epochs <= self.epochs:
            lines.append(
                _line(("min_epochs",), f"must be in [1, epochs={self.epochs}], got {self.min_epochs}", self.min_epochs)
            )
        _raise(type(self).__name__, lines)
        return self

    def train_config(self, seed: int) -> TrainConfig:
        """The trainer's configuration for one trial, seeded with ``seed``."""
        from sparse_nas.training import TrainConfig

        fields = {name: getattr(self, name) for name in type(self).model_fields if name not in _MULTI_FIDELITY_FIELDS}
        return TrainConfig(**fields, seed=seed)


# --- execution ------------------------------------------------------------------------


class ExecutionSpec(_SpecModel):
    """Where and how many trials run at once.

    Attributes:
        backend: ``"inprocess"`` runs one trial at a time in the driver (tests, tiny
            jobs); ``"ray"`` runs trials on Ray.
        ray_address: An existing Ray cluster (``"auto"``, ``"host:6379"``,
            ``"ray://host:10001"``); ``None`` starts a private local Ray.
        concurrency: Trials running at once (``"ray"`` only; in-process runs one).
        cpus_per_trial: CPUs given to each trial; its torch threads are pinned to them.
    """

    backend: BackendName = "inprocess"
    ray_address: str | None = None
    concurrency: Count = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    cpus_per_trial: Count = Field(default=1, ge=1, le=MAX_CPUS_PER_TRIAL)

    @model_validator(mode="after")
    def _fits_backend(self) -> ExecutionSpec:
        lines = []
        if self.backend == "inprocess":
            if self.ray_address is not None:
                lines.append(
                    _line(("ray_address",), "only used with backend 'ray'; set backend: ray", self.ray_address)
                )
            if self.concurrency > 1:
                lines.append(
                    _line(
                        ("concurrency",),
                        f"backend 'inprocess' runs one trial at a time, got {self.concurrency}; "
                        "use backend 'ray' for concurrent trials",
                        self.concurrency,
                    )
                )
        if self.ray_address is not None and not self.ray_address.strip():
            lines.append(_line(("ray_address",), "must be a cluster address or null (start a local Ray)", ""))
        _raise(type(self).__name__, lines)
        return self


# --- differentiable search -------------------------------------------------------------


class DnasSpec(_SpecModel):
    """Settings of the ``dnas`` and ``hybrid`` strategies (docs/dnas.md); every field has a default.

    Attributes:
        sweep_points: ``hybrid`` only: architectures the differentiable search derives
            (one per penalty strength) to seed mobo's initial design; ``None`` means
            ``max(1, initial_trials // 2)``. ``dnas`` derives ``n_trials`` of them.
        penalty_range: ``[low, high]`` penalty strengths, swept geometrically.
        warmup_epochs: Supernet epochs training weights only.
        search_epochs: Supernet epochs alternating weight and architecture steps.
        arch_lr: Adam learning rate of the architecture parameters.
        temperature: ``[start, end]`` of the Gumbel-softmax temperature (annealed
            exponentially over the search epochs).
        compression: Compression choices of each compressible layer: ``"dense"`` or
            ``"method:level"`` with a method of ``dense``, ``magnitude_pruning``,
            ``low_rank`` and a level 1-5; sparse_cnn's convs use ``dense`` and
            ``magnitude_pruning`` (density 2^-level).
        budget_margin: Hinge targets as fractions of the limits, in ``(0, 1]``.
        constraint_weight: Weight of the hinge penalties.
    """

    sweep_points: Count | None = Field(default=None, ge=1, le=MAX_TRIALS)
    penalty_range: tuple[float, float] = (0.02, 2.0)
    warmup_epochs: Count = Field(default=2, ge=0, le=MAX_EPOCHS)
    search_epochs: Count = Field(default=3, ge=1, le=MAX_EPOCHS)
    arch_lr: float = 0.1
    temperature: tuple[float, float] = (5.0, 0.5)
    compression: tuple[str, ...] = ("dense", "magnitude_pruning:2", "magnitude_pruning:3", "low_rank:2")
    budget_margin: float = 0.9
    constraint_weight: float = 10.0

    @model_validator(mode="after")
    def _valid(self) -> DnasSpec:
        lines = []
        for name in ("penalty_range", "temperature"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low > 0 and high > 0):
                lines.append(_line((name,), f"expected two positive numbers, got {[low, high]}", [low, high]))
        low, high = self.penalty_range
        if low > high:
            lines.append(_line(("penalty_range",), f"expected low <= high, got {[low, high]}", [low, high]))
        for name in ("arch_lr", "constraint_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                lines.append(_line((name,), f"must be positive, got {value!r}", value))
        if not (math.isfinite(self.budget_margin) and 0 < self.budget_margin <= 1):
            margin = self.budget_margin
            lines.append(_line(("budget_margin",), f"must be in (0, 1], got {margin!r}", margin))
        if not self.compression:
            lines.append(_line(("compression",), "needs at least one choice, e.g. ['dense']", []))
        for i, text in enumerate(self.compression):
            try:
                _compression_choice(text)
            except ValueError as exc:
                lines.append(_line(("compression", i), str(exc), text))
        _raise(type(self).__name__, lines)
        return self

    def compression_choices(self) -> tuple[tuple[str, int], ...]:
        """The compression choices as ``(method, level)`` pairs (level 0 for ``dense``)."""
        return tuple(_compression_choice(text) for text in self.compression)


def _compression_choice(text: str) -> tuple[str, int]:
    """``"dense"`` -> ``("dense", 0)``; ``"low_rank:2"`` -> ``("low_rank", 2)``; ValueError otherwise."""
    from sparse_nas.strategies.dnas.plan import MAX_LEVEL, SUPERNET_METHODS

    method, _, level = text.partition(":")
    rule = f"expected 'dense' or 'method:level' with a method of {_names(SUPERNET_METHODS)} and a level 1-{MAX_LEVEL}"
    if method not in SUPERNET_METHODS:
        raise ValueError(f"{rule}, got {text!r}")
    if method == "dense":
        if level:
            raise ValueError(f"'dense' takes no level, got {text!r}")
        return method, 0
    if not level.isdigit() or not 1 <= int(level) <= MAX_LEVEL:
        raise ValueError(f"{rule}, got {text!r}")
    return method, int(level)


# --- the job ------------------------------------------------------------------------


class SearchJobSpec(_SpecModel):
    """One search job: what to search, for which device, under which budgets, and how.

    Attributes:
        name: A label for people; not used by the search.
        seed: Seeds the validation split, the sampler and every trial's training.
        dataset: The dataset and its split.
        search_space: The model family and its options.
        device: A catalogue device name (``GET /api/devices``) or a complete custom
            device object in the device-file format (``docs/devices.md``).
        runtime: The deployment runtime the costs assume: ``"tflm"`` or ``"ideal"``.
        budgets: Hardware limits; the device's flash and SRAM always apply too.
        objectives: ``"accuracy"`` first (maximised), then 1-3 distinct costs
            (minimised) from ``flash_bytes``, ``sram_bytes``, ``macs``, ``latency_ms``.
        strategy: ``mobo``, ``gp``, ``nsga2``, ``tpe``, ``random``, ``dnas`` (differentiable
            search: every trial is a derived architecture, one per penalty strength) or
            ``hybrid`` (DNAS architectures seed ``mobo``'s initial design).
        n_trials: Trials to run (feasible and infeasible ones alike).
        initial_trials: Trials of the space-filling start (Sobol for ``mobo``, random
            start-up for ``gp`` and ``tpe``); at most ``n_trials``. Default
            ``min(10, n_trials)``.
        training: Per-trial training fidelity.
        execution: Where trials run.
        dnas: Settings of ``dnas`` and ``hybrid``; ``None`` takes :class:`DnasSpec`'s defaults.
    """

    name: str | None = None
    seed: Count = Field(default=0, ge=0, le=MAX_SEED)
    dataset: DatasetSpec
    search_space: SearchSpaceSpec
    device: str | dict[str, Any]
    runtime: str = "tflm"
    budgets: BudgetsSpec = Field(default_factory=BudgetsSpec)
    objectives: tuple[ObjectiveName, ...] = DEFAULT_OBJECTIVES
    strategy: StrategyName = "mobo"
    n_trials: Count = Field(default=40, ge=1, le=MAX_TRIALS)
    initial_trials: Count = Field(default=DEFAULT_INITIAL_TRIALS, ge=1, le=MAX_TRIALS)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    dnas: DnasSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_initial_trials(cls, data: Any) -> Any:
        # The default start phase shrinks to a small job's whole budget; a value given
        # explicitly is checked against n_trials instead.
        if isinstance(data, Mapping) and "initial_trials" not in data:
            n_trials = data.get("n_trials")
            if isinstance(n_trials, int) and not isinstance(n_trials, bool) and n_trials >= 1:
                return {**data, "initial_trials": min(DEFAULT_INITIAL_TRIALS, n_trials)}
        return data

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(device, str):
            valid = [d.name for d in list_devices()]
            if device not in valid:
                raise PydanticCustomError(
                    "unknown_device",
                    f"unknown device {device!r}; valid: {_names(valid)}, or a custom device object "
                    "in the device-file format",
                )
            return device
        try:
            device_from_dict(device, origin="device")
        except InvalidDeviceError as exc:
            message = str(exc)
            located = re.match(r"device((?:\.\w+)*): (.*)", message, re.DOTALL)
            path = tuple(located[1].split(".")[1:]) if located else ()
            value: Any = device
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            _raise(cls.__name__, [_line(path, located[2] if located else message, value)])
        return device

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, runtime: str) -> str:
        if runtime not in RUNTIMES:
            raise PydanticCustomError(
                "unknown_runtime", f"unknown runtime {runtime!r}; valid: {_names(list(RUNTIMES))}"
            )
        return runtime

    @field_validator("objectives")
    @classmethod
    def _valid_objectives(cls, objectives: tuple[str, ...]) -> tuple[str, ...]:
        rule = f"'accuracy' first, then 1-{MAX_OBJECTIVES - 1} distinct of {_names(COST_OBJECTIVES)}"
        if not objectives or objectives[0] != ACCURACY:
            raise PydanticCustomError("objectives", f"must start with 'accuracy' (maximised); expected {rule}")
        if not 2 <= len(objectives) <= MAX_OBJECTIVES:
            raise PydanticCustomError("objectives", f"expected 2-{MAX_OBJECTIVES} names: {rule}")
        repeated = sorted({name for name in objectives if objectives.count(name) > 1})
        if repeated:
            raise PydanticCustomError("objectives", f"{_names(repeated)} given more than once; expected {rule}")
        return objectives

    @model_validator(mode="after")
    def _consistent(self) -> SearchJobSpec:
        lines = []
        if self.initial_trials > self.n_trials:
            lines.append(
                _line(
                    ("initial_trials",),
                    f"must be at most n_trials ({self.n_trials}), got {self.initial_trials}",
                    self.initial_trials,
                )
            )
        space_problem = self._search_space_problem()
        if space_problem is not None:
            lines.append(space_problem)
        else:
            lines += self._budget_problems()
        lines += self._dnas_problems()
        _raise(type(self).__name__, lines)
        return self

    def _dnas_problems(self) -> list[InitErrorDetails]:
        """Errors of the differentiable-search settings, located."""
        lines = []
        if self.strategy not in DNAS_STRATEGIES:
            if self.dnas is not None:
                lines.append(
                    _line(
                        ("dnas",),
                        f"only used with strategy {_names(DNAS_STRATEGIES)}, not {self.strategy!r}",
                        self.dnas.model_dump(mode="json"),
                    )
                )
            return lines
        from sparse_nas.strategies.dnas import SUPPORTED_SEARCH_SPACES

        if self.search_space.name not in SUPPORTED_SEARCH_SPACES:
            lines.append(
                _line(
                    ("strategy",),
                    f"{self.strategy!r} searches {_names(SUPPORTED_SEARCH_SPACES)}, not {self.search_space.name!r}; "
                    "use another strategy or search space",
                    self.strategy,
                )
            )
        points = self.dnas.sweep_points if self.dnas is not None else None
        if points is not None and self.strategy == "dnas":
            lines.append(
                _line(("dnas", "sweep_points"), "only for hybrid: dnas derives n_trials architectures", points)
            )
        elif points is not None and points > self.n_trials:
            lines.append(
                _line(("dnas", "sweep_points"), f"must be at most n_trials ({self.n_trials}), got {points}", points)
            )
        return lines

    def _search_space_problem(self) -> InitErrorDetails | None:
        """The search space's options or shape error for this dataset, located; else None."""
        from search_spaces.families import InvalidSearchSpaceError, get_search_space

        try:
            self.build_search_space()
        except InvalidSearchSpaceError as exc:
            message = str(exc)
            option = re.match(r"options(?:\.(\w+))?: (.*)", message, re.DOTALL)
            if option:
                loc = ("search_space", "options", option[1]) if option[1] else ("search_space", "options")
                value = self.search_space.options.get(option[1]) if option[1] else self.search_space.options
                return _line(loc, option[2], value)
            shape, classes = self.dataset.input_shape(), self.dataset.num_classes()
            fitting = []
            for name in _search_space_names():
                try:
                    get_search_space(name, shape, classes)
                except InvalidSearchSpaceError:
                    continue
                fitting.append(name)
            return _line(
                ("search_space", "name"),
                f"{self.search_space.name!r} does not fit dataset {self.dataset.name!r} (input shape "
                f"{shape}, {classes} classes): {message}; search spaces that fit: {_names(fitting) or 'none'}",
                self.search_space.name,
            )
        return None

    def _budget_problems(self) -> list[InitErrorDetails]:
        """One located error per budget (or device memory) the space cannot meet."""
        minimum = self.minimum_costs()
        device = self.device_spec()
        space, runtime = self.search_space.name, self.runtime
        remedy = "change search_space.options to allow smaller networks"
        achievable = (
            f"smallest achievable: flash {minimum['flash_bytes']:,.0f} B, SRAM {minimum['sram_bytes']:,.0f} B, "
            f"latency {minimum['latency_ms']:.3g} ms, {minimum['macs']:,.0f} MACs"
        )
        lines = []
        for metric, budget_field, device_bytes, label in (
            ("flash_bytes", "max_flash_bytes", device.flash_bytes, "flash"),
            ("sram_bytes", "max_sram_bytes", device.sram_bytes, "SRAM"),
        ):
            need = round(minimum[metric])
            budget = getattr(self.budgets, budget_field)
            needs = f"the smallest {label} any {space} network needs"
            amount = f"({need:,} B, {runtime} runtime)"
            if budget is not None and budget < device_bytes:
                if need > budget:
                    message = (
                        f"{budget:,} B is below {needs} on {device.name} {amount}; "
                        f"raise the budget or {remedy} ({achievable})"
                    )
                    lines.append(_line(("budgets", budget_field), message, budget))
            elif need > device_bytes:
                message = (
                    f"{device.name} has {device_bytes:,} B of {label}, below {needs} {amount}; "
                    f"pick a larger device or {remedy} ({achievable})"
                )
                lines.append(_line(("device",), message, self.device))
        latency = self.budgets.max_latency_ms
        if latency is not None and minimum["latency_ms"] > latency:
            message = (
                f"{latency:g} ms is below the lowest latency any {space} network reaches on {device.name} "
                f"({minimum['latency_ms']:.3g} ms, {runtime} runtime); raise the budget or {remedy} ({achievable})"
            )
            lines.append(_line(("budgets", "max_latency_ms"), message, latency))
        return lines

    # --- what the engine uses ---------------------------------------------------------

    def dataset_config(self) -> DatasetConfig:
        """The dataset to load, split with the job's seed."""
        return self.dataset.dataset_config(self.seed)

    def device_spec(self) -> DeviceSpec:
        """The target device: the catalogue entry, or the custom device object validated."""
        if isinstance(self.device, str):
            return get_device(self.device)
        return device_from_dict(self.device, origin="device")

    def runtime_profile(self) -> RuntimeProfile:
        """The runtime profile the costs assume."""
        return get_runtime(self.runtime)

    def build_search_space(self) -> BaseSearchSpace:
        """The search space for the dataset's input shape and classes, with the job's options."""
        from search_spaces.families import get_search_space

        return get_search_space(
            self.search_space.name,
            self.dataset.input_shape(),
            self.dataset.num_classes(),
            self.search_space.options,
        )

    def minimum_costs(self) -> dict[str, float]:
        """The lowest flash, SRAM, MACs, latency and energy any network of the space reaches
        on the device (``BaseSearchSpace.minimum_costs``; cached per process)."""
        return dict(
            _minimum_costs(
                self.search_space.name,
                json.dumps(self.search_space.options, sort_keys=True),
                self.dataset.input_shape(),
                self.dataset.num_classes(),
                self.device_spec(),
                self.runtime,
            )
        )

    def limits(self) -> dict[str, float]:
        """What every deployed network must meet: each budget, capped by the device's memory.

        Returns:
            ``flash_bytes`` and ``sram_bytes`` always (the budget or the device's
            memory, whichever is lower), and ``latency_ms`` when a latency budget is set.
        """
        device = self.device_spec()
        flash, sram = self.budgets.max_flash_bytes, self.budgets.max_sram_bytes
        out: dict[str, float] = {
            "flash_bytes": device.flash_bytes if flash is None else min(flash, device.flash_bytes),
            "sram_bytes": device.sram_bytes if sram is None else min(sram, device.sram_bytes),
        }
        if self.budgets.max_latency_ms is not None:
            out["latency_ms"] = self.budgets.max_latency_ms
        return out

    def dnas_settings(self) -> DnasSpec:
        """The differentiable-search settings: ``dnas``, or the defaults."""
        return self.dnas if self.dnas is not None else DnasSpec()

    def dnas_sweep_points(self) -> int:
        """Architectures the differentiable search derives: ``n_trials`` (dnas) or ``sweep_points`` (hybrid)."""
        if self.strategy == "dnas":
            return self.n_trials
        points = self.dnas_settings().sweep_points
        return points if points is not None else max(1, self.initial_trials // 2)

    def directions(self) -> list[str]:
        """Optuna study directions, one per objective: accuracy up, costs down."""
        return ["maximize" if name == ACCURACY else "minimize" for name in self.objectives]

    # --- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, every field explicit; ``model_validate`` reads it back."""
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        """The spec as JSON text; ``model_validate_json`` reads it back."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SearchJobSpec:
        """Read and validate a spec file: ``.json``, or ``.yaml`` / ``.yml`` (needs PyYAML).

        Raises:
            SpecFileError: The file is missing, has another suffix, or does not parse.
            pydantic.ValidationError: The document is not a valid spec.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise SpecFileError(f"spec file {str(path)!r}: expected a .json, .yaml or .yml file")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecFileError(f"spec file {str(path)!r} does not exist") from None
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecFileError(f"spec file {str(path)!r} is not valid JSON: {exc}") from exc
        else:
            data = _load_yaml(text, path)
        if not isinstance(data, Mapping):
            raise SpecFileError(f"spec file {str(path)!r}: expected a mapping of fields, got {type(data).__name__}")
        return cls.model_validate(data)


def _load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise SpecFileError(
            f"spec file {str(path)!r}: reading YAML needs PyYAML (pip install pyyaml); or use JSON"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecFileError(f"spec file {str(path)!r} is not valid YAML: {exc}") from exc


@functools.lru_cache(maxsize=256)
def _minimum_costs(
    space: str,
    options_json: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: DeviceSpec,
    runtime: str,
) -> tuple[tuple[str, float], ...]:
    """``BaseSearchSpace.minimum_costs``, memoised on everything it depends on."""
    from search_spaces.families import get_search_space

    instance = get_search_space(space, input_shape, num_classes, json.loads(options_json))
    return tuple(instance.minimum_costs(device, runtime).items())
