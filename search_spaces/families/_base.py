"""The extension point for model families: `BaseSearchSpace`, and its registry.

A family is a search space over architecture, per-layer pruning and per-layer
compression method together. It owns fixed Optuna distributions (their names are a
schema stored in the database: keep them stable and unconditional), turns a point of
the space into a torch model (`build`) and into a hw_models network (`to_network`), and
costs thousands of points at once for screening (`cost_batch`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn

from hw_models import BatchCostReport, DeviceSpec, NetworkBuilder, NetworkSpec, estimate_batch
from hw_models.runtimes import RuntimeProfile
from search_spaces.errors import SearchSpaceError
from search_spaces.quantization import prepare_qat

Params = Mapping[str, Any]
COST_METRICS = ("flash_bytes", "sram_bytes", "macs", "latency_ms", "energy_mj")


class InvalidSearchSpaceError(SearchSpaceError, ValueError):
    """Bad family options or parameters; the message names the field."""


@dataclass(frozen=True)
class OptionSpec:
    """A user-settable option of a family (set in the job spec)."""

    name: str
    default: Any
    description: str
    check: Callable[[Any], str | None] | None = None
    """Returns an error sentence for a bad value, or None."""


def int_range(value: Any) -> str | None:
    """Option check: `[low, high]` integers with 1 <= low <= high."""
    ok = isinstance(value, list | tuple) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )
    if not ok or not 1 <= value[0] <= value[1]:
        return f"expected [low, high] with 1 <= low <= high, got {value!r}"
    return None


def subset_of(valid: Sequence[str]) -> Callable[[Any], str | None]:
    """Option check: a non-empty list drawn from `valid`."""

    def check(value: Any) -> str | None:
        if not isinstance(value, list | tuple) or not value or any(v not in valid for v in value):
            return f"expected a non-empty list drawn from {list(valid)}, got {value!r}"
        return None

    return check


def between(low: int, high: int) -> Callable[[Any], str | None]:
    """Option check: an integer in [low, high]."""

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"expected an integer in [{low}, {high}], got {value!r}"
        return None

    return check


class BaseSearchSpace(abc.ABC):
    """A model family. Subclasses set `name`, `option_specs` and the abstract methods.

    Contract (checked for every registered family by tests/search_spaces_tests):
    - `distributions()` is fixed for given options: the same names and ranges on every
      call, none conditional on another parameter (a maximum depth plus per-block
      on/off flags, so joint samplers see the whole space).
    - `describe(builder, params)` writes the network into a hw_models NetworkBuilder
      and returns its output tensor. Numeric parameters may be numpy arrays (one entry
      per candidate); so may categorical ones left out of `topology_key` (compression
      methods: `_knobs.structure` takes an array of them); the others are single
      values. `to_network` and `cost_batch` both go through it, so screening and
      single costing agree.
    - `build(params)` returns a torch model taking (N, *input_shape) in torch layout;
      its parameter count and MACs equal `to_network(params)`'s (non-zeros after
      pruning: use `network_from_model` on a trained model).
    - `smallest()` costs no more (flash, SRAM, MACs, latency) than any other point.
    - Sampling is deterministic for a seed; the space is picklable.
    """

    name: ClassVar[str]
    option_specs: ClassVar[tuple[OptionSpec, ...]] = ()

    def __init__(self, input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any] | None = None):
        if not input_shape or any(int(d) <= 0 for d in input_shape):
            raise InvalidSearchSpaceError(f"input_shape: expected positive dimensions, got {list(input_shape)}")
        if num_classes < 2:
            raise InvalidSearchSpaceError(f"num_classes: expected at least 2, got {num_classes}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.options = self._check_options(dict(options or {}))

    # --- options --------------------------------------------------------------------

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        specs = {spec.name: spec for spec in cls.option_specs}
        unknown = sorted(set(options) - set(specs))
        if unknown:
            raise InvalidSearchSpaceError(
                f"options: unknown option(s) {unknown} for search space {cls.name!r}; valid: {sorted(specs)}"
            )
        out = {}
        for name, spec in specs.items():
            value = options.get(name, spec.default)
            problem = spec.check(value) if spec.check else None
            if problem:
                raise InvalidSearchSpaceError(f"options.{name}: {problem}")
            out[name] = value
        return out

    # --- the space ------------------------------------------------------------------

    @abc.abstractmethod
    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter's Optuna distribution, by stable name."""

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Suggest every parameter from `trial` (Trial, FixedTrial or FrozenTrial)."""
        return {name: suggest(trial, name, dist) for name, dist in self.distributions().items()}

    def check_params(self, params: Params) -> dict[str, Any]:
        """`params` with every parameter present and inside its distribution."""
        dists = self.distributions()
        missing = sorted(set(dists) - set(params))
        unknown = sorted(set(params) - set(dists))
        if missing or unknown:
            raise InvalidSearchSpaceError(
                f"params: {self.name!r} needs exactly its parameters; missing {missing}, unknown {unknown}"
            )
        for name, dist in dists.items():
            value = params[name]
            if isinstance(dist, CategoricalDistribution):
                inside = value in dist.choices
            else:
                inside = isinstance(value, int | float) and not isinstance(value, bool) and dist._contains(value)
            if not inside:
                raise InvalidSearchSpaceError(f"params.{name}: {value!r} is outside {dist}")
        return dict(params)

    def invalid_reason(self, params: Params) -> str | None:
        """Why the point cannot be built on this input size (a layer's map would vanish), or None.

        Such points are in the space (its distributions are fixed) but are never trained;
        the search records them infeasible with this reason. The default: every point is valid.
        """
        return None

    @abc.abstractmethod
    def smallest(self) -> dict[str, Any]:
        """The cheapest point of the space (every cost at its minimum)."""

    def corner_candidates(self) -> list[dict[str, Any]]:
        """`smallest()` and every one-parameter categorical variation of it.

        No single point need be cheapest in every cost at once (a depthwise-separable
        block can save SRAM yet cost an op and its code); the per-cost minima over these
        points are the lower bounds a job's budgets are checked against.
        """
        base = self.smallest()
        out = [base]
        for name, dist in self.distributions().items():
            if isinstance(dist, CategoricalDistribution):
                out += [base | {name: c} for c in dist.choices if c != base[name]]
        return out

    def minimum_costs(self, device: DeviceSpec | str, runtime: RuntimeProfile | str = "tflm") -> dict[str, float]:
        """The lowest flash, SRAM, MACs, latency and energy any point of the space reaches."""
        report = self.cost_batch(self.corner_candidates(), device, runtime)
        return {m: float(getattr(report, m).min()) for m in COST_METRICS}

    # --- models and networks -----------------------------------------------------------

    @abc.abstractmethod
    def build(self, params: Params) -> nn.Module:
        """The torch model of one point (input (N, *input_shape), output logits)."""

    @abc.abstractmethod
    def describe(self, builder: NetworkBuilder, params: Params) -> str:
        """Write the network of `params` into `builder`; return the output tensor name."""

    def hw_input_shape(self) -> tuple[int, ...]:
        """The input shape in hw_models' channels-last layout: (C, H, W) -> (H, W, C)."""
        if len(self.input_shape) == 3:
            c, h, w = self.input_shape
            return (h, w, c)
        return self.input_shape

    def network_input_shape(self, params: Params) -> tuple[Any, ...]:
        """The hw network's input shape for `params` (entries may be arrays in a batch).

        The dataset's shape by default; a family that resizes its input overrides it.
        """
        return self.hw_input_shape()

    def activation_bits(self, params: Params) -> int:
        """Bits of deployed weights and activations: 8 for `quantization` int8 (the default)."""
        return 8 if params.get("quantization", "int8") == "int8" else 32

    def quantize_if_int8(self, model: nn.Module, params: Params) -> nn.Module:
        """Prepare `model` for quantisation-aware training when the point is int8."""
        if self.activation_bits(params) == 8:
            prepare_qat(model, bits=8)
        return model

    def to_network(self, params: Params) -> NetworkSpec:
        """The hw_models network of one point (planned: densities at their targets)."""
        params = self.check_params(params)
        b = NetworkBuilder(self.name, self.network_input_shape(params), bits=self.activation_bits(params))
        return b.build([self.describe(b, params)])

    def network_from_model(self, model: nn.Module, params: Params) -> NetworkSpec:
        """The network of a trained model from its real state (actual densities).

        Families whose layers prune override this to read the masks; by default the
        planned network is returned.
        """
        return self.to_network(params)

    # --- batch costing ---------------------------------------------------------------

    def topology_key(self, params: Params) -> tuple[Any, ...]:
        """Values that change the graph or bits (default: the categorical parameters).

        Points with equal keys are costed together in one vectorised pass. Structure
        kinds need not be in it: a weight whose kind differs between points of a group
        is a `hw_models.Mixed` (`_knobs.structure` of an array of methods).
        """
        dists = self.distributions()
        return tuple((k, params[k]) for k in sorted(dists) if isinstance(dists[k], CategoricalDistribution))

    def cost_batch(
        self,
        candidates: Sequence[Params],
        device: DeviceSpec | str,
        runtime: RuntimeProfile | str = "tflm",
    ) -> BatchCostReport:
        """Cost many points at once: grouped by topology, each group in one vectorised pass.

        Entry i of every array of the result is the cost of `candidates[i]`.
        """
        if not candidates:
            raise InvalidSearchSpaceError("candidates: need at least one point to cost")
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, params in enumerate(candidates):
            groups.setdefault(self.topology_key(params), []).append(i)
        parts: list[tuple[list[int], BatchCostReport]] = []
        for rows in groups.values():
            group = [candidates[i] for i in rows]
            stacked = {k: _stack([p[k] for p in group]) for k in group[0]}
            b = NetworkBuilder(self.name, self.network_input_shape(stacked), bits=self.activation_bits(group[0]))
            out = self.describe(b, stacked)
            batch = b.build_batch([out])
            batch.size = len(rows)
            parts.append((rows, estimate_batch(batch, device, runtime)))
        return _merge(parts, len(candidates))


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if all(v == first for v in values) and not isinstance(first, float):
        return first
    return np.asarray(values)


def _merge(parts: list[tuple[list[int], BatchCostReport]], n: int) -> BatchCostReport:
    first = parts[0][1]
    arrays: dict[str, np.ndarray] = {}
    for field in first.__dataclass_fields__:
        value = getattr(first, field)
        if isinstance(value, np.ndarray):
            out = np.zeros(n, dtype=value.dtype)
            for rows, report in parts:
                out[rows] = np.broadcast_to(getattr(report, field), (len(rows),))
            arrays[field] = out
    return BatchCostReport(
        device=first.device,
        runtime=first.runtime,
        size=n,
        device_flash_bytes=first.device_flash_bytes,
        device_sram_bytes=first.device_sram_bytes,
        **arrays,
    )


def suggest(trial: optuna.trial.BaseTrial, name: str, dist: BaseDistribution) -> Any:
    """Suggest `name` from `trial` with the public API matching `dist`'s type."""
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise InvalidSearchSpaceError(f"{name}: unsupported distribution {type(dist).__name__}")


_REGISTRY: dict[str, type[BaseSearchSpace]] = {}


def register_search_space(cls: type[BaseSearchSpace]) -> type[BaseSearchSpace]:
    """Class decorator (at the bottom of each family's file); a name registered twice raises."""
    if cls.name in _REGISTRY:
        raise SearchSpaceError(f"search space {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def search_space_names() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_REGISTRY)


def get_search_space(
    name: str, input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any] | None = None
) -> BaseSearchSpace:
    """An instance of the family `name` for a dataset's input shape and classes."""
    if name not in _REGISTRY:
        raise InvalidSearchSpaceError(f"search_space: unknown {name!r}; valid: {', '.join(search_space_names())}")
    return _REGISTRY[name](input_shape, num_classes, options)


def search_space_class(name: str) -> type[BaseSearchSpace]:
    """The registered class of `name` (for its documentation and option specs)."""
    if name not in _REGISTRY:
        raise InvalidSearchSpaceError(f"search_space: unknown {name!r}; valid: {', '.join(search_space_names())}")
    return _REGISTRY[name]


def iter_search_spaces() -> Iterable[type[BaseSearchSpace]]:
    return (_REGISTRY[n] for n in search_space_names())
