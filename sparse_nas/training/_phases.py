"""Training phases: hooks into the trainer's loop, and gradual magnitude pruning."""

from __future__ import annotations

import abc
import math
from typing import Literal

import torch
from torch import nn

from search_spaces.compression import cubic_density
from sparse_nas.training._config import TrainingConfigError


class BaseTrainingPhase(abc.ABC):
    """A stage of training that acts at fixed points of the trainer's loop.

    Phases are how pruning schedules and quantisation-aware fine-tuning plug into
    :func:`~sparse_nas.training.train` without the trainer knowing about them.

    Contract:
        * Call order, for the phases in the order given to ``train``:
          ``wrap_model`` (each phase wraps the previous phase's result; the optimiser
          is built on the final module afterwards), ``on_train_start`` (once),
          then per epoch ``on_epoch_start`` and after every optimiser step
          ``on_step_end``, and finally ``on_train_end`` (also when training stops
          early). ``metrics`` may be called at any time after ``on_train_start``.
        * Steps are optimiser steps counted from 0 over the whole run;
          ``total_steps`` is epochs x steps per epoch. Epochs are 0-based indices.
        * Hooks run in the training process, under ``torch.no_grad`` for
          ``on_step_end``, with the model in training mode. They must be
          deterministic given the model's state and the step (randomness, if any,
          seeded from the phase's own ``seed`` argument), so that training stays
          reproducible for a seed.
        * ``on_train_start`` resets all per-run state, so one instance may serve
          several ``train`` calls one after another, never concurrently (phases are
          not thread-safe). A phase is picklable before ``on_train_start`` so that a
          trial can ship it to a worker process.
        * A phase may change parameter values in place (pruning masks) but must not
          add or remove parameters after ``wrap_model``: the optimiser already holds
          them.
    """

    @property
    def name(self) -> str:
        """Prefix of this phase's keys in reported metrics."""
        return type(self).__name__

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Return the module to train in place of ``model`` (default: ``model`` itself)."""
        return model

    @abc.abstractmethod
    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        """Bind to the module being trained and reset per-run state.

        Args:
            model: The module the optimiser updates (after every ``wrap_model``).
            total_steps: Optimiser steps the run will take if not stopped early.
        """

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before the first step of epoch ``epoch`` (0-based)."""

    def on_step_end(self, step: int) -> None:  # noqa: B027 - optional hook
        """Called after optimiser step ``step`` (0-based), under ``torch.no_grad``."""

    def on_train_end(self) -> None:  # noqa: B027 - optional hook
        """Called once when training ends, normally or early."""

    def metrics(self) -> dict[str, float]:
        """Numbers describing the phase's current state, e.g. ``{"density": 0.25}``."""
        return {}


def cubic_sparsity(
    step: int,
    *,
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
) -> float:
    """Target sparsity after ``step`` optimiser steps, by Zhu & Gupta's cubic schedule.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt)) ** 3`` for
    ``t_0 <= t <= t_0 + n * dt``; ``s_i`` before ``t_0`` and ``s_f`` after
    (Zhu & Gupta 2017, "To prune, or not to prune", arXiv 1710.01878, eq. 1).
    Here ``n * dt = end_step - begin_step``.

    Args:
        step: Optimiser steps completed.
        initial_sparsity: ``s_i``, fraction of weights that are zero at ``begin_step``.
        final_sparsity: ``s_f``, fraction of weights that are zero from ``end_step`` on.
        begin_step: ``t_0``.
        end_step: ``t_0 + n * dt``; must be >= ``begin_step``.

    Returns:
        The sparsity in ``[0, 1]``.
    """
    # One implementation of the schedule, in the layer the compression layers live in.
    return 1.0 - cubic_density(step, begin_step, end_step, 1.0 - final_sparsity, 1.0 - initial_sparsity)


def _check_schedule_window(start_fraction: float, end_fraction: float, update_every_steps: int) -> None:
    if not 0.0 <= start_fraction <= end_fraction <= 1.0:
        raise TrainingConfigError(
            "need 0 <= start_fraction <= end_fraction <= 1, got "
            f"start_fraction={start_fraction}, end_fraction={end_fraction}"
        )
    if update_every_steps < 1:
        raise TrainingConfigError(f"update_every_steps must be at least 1, got {update_every_steps}")


class GradualMagnitudePruningPhase(BaseTrainingPhase):
    """Gradual magnitude pruning of conv and linear weights (Zhu & Gupta 2017).

    Every ``update_every_steps`` optimiser steps between ``start_fraction`` and
    ``end_fraction`` of training, the masks are recomputed so that the smallest-
    magnitude weights make up the sparsity given by :func:`cubic_sparsity`; after every
    optimiser step the weights are multiplied by their masks, so pruned weights stay
    zero (and, being smallest, stay pruned). The trained state therefore holds real
    zeros. Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
    for model compression", arXiv 1710.01878.

    Args:
        final_sparsity: Fraction of the prunable weights that are zero at the end, in
            ``[0, 1)``.
        initial_sparsity: Sparsity applied at the start of pruning, ``<= final``.
        start_fraction: Fraction of the run's steps after which pruning starts.
        end_fraction: Fraction of the run's steps by which ``final_sparsity`` is
            reached; the rest of the run fine-tunes with fixed masks.
        update_every_steps: ``dt``, steps between mask updates.
        scope: ``"global"`` ranks all prunable weights together (layers end with
            different densities); ``"layer"`` prunes each layer to the same sparsity.
        layer_types: Module types whose ``weight`` is pruned. Biases are never pruned.
    """

    def __init__(
        self,
        final_sparsity: float,
        *,
        initial_sparsity: float = 0.0,
        start_fraction: float = 0.0,
        end_fraction: float = 0.75,
        update_every_steps: int = 20,
        scope: Literal["global", "layer"] = "global",
        layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
    ) -> None:
        if not 0.0 <= final_sparsity < 1.0:
            raise TrainingConfigError(f"final_sparsity must be in [0, 1), got {final_sparsity}")
        if not 0.0 <= initial_sparsity <= final_sparsity:
            raise TrainingConfigError(
                f"initial_sparsity must be in [0, final_sparsity={final_sparsity}], got {initial_sparsity}"
            )
        _check_schedule_window(start_fraction, end_fraction, update_every_steps)
        if scope not in ("global", "layer"):
            raise TrainingConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.start_fraction = start_fraction
        self.end_fraction = end_fraction
        self.update_every_steps = update_every_steps
        self.scope = scope
        self.layer_types = layer_types
        self._weights: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}
        self.begin_step = 0
        self.end_step = 0

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        """Collect the prunable weights, set all-ones masks and fix the step window."""
        self._weights = {
            f"{name}.weight" if name else "weight": module.weight
            for name, module in model.named_modules()
            if isinstance(module, self.layer_types) and isinstance(getattr(module, "weight", None), torch.Tensor)
        }
        if not self._weights:
            raise TrainingConfigError(
                "GradualMagnitudePruningPhase found no weights to prune: the model has no "
                f"module of types {[t.__name__ for t in self.layer_types]}"
            )
        self._masks = {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in self._weights.items()}
        self.begin_step = round(self.start_fraction * total_steps)
        self.end_step = max(self.begin_step, round(self.end_fraction * total_steps))

    def target_sparsity(self, steps_done: int) -> float:
        """Sparsity the schedule asks for once ``steps_done`` optimiser steps are done."""
        return cubic_sparsity(
            steps_done,
            initial_sparsity=self.initial_sparsity,
            final_sparsity=self.final_sparsity,
            begin_step=self.begin_step,
            end_step=self.end_step,
        )

    def on_step_end(self, step: int) -> None:
        """Update the masks when the schedule says so, then zero the pruned weights."""
        steps_done = step + 1
        due = self.begin_step <= steps_done <= self.end_step and (
            (steps_done - self.begin_step) % self.update_every_steps == 0 or steps_done == self.end_step
        )
        if due:
            self._update_masks(self.target_sparsity(steps_done))
        for name, weight in self._weights.items():
            weight.mul_(self._masks[name])

    def on_train_end(self) -> None:
        """Drop references to the model's tensors; the masks stay readable."""
        self._weights = {}

    def density(self) -> float:
        """Fraction of the prunable weights that the masks keep."""
        kept = sum(int(mask.sum()) for mask in self._masks.values())
        total = sum(mask.numel() for mask in self._masks.values())
        return kept / total if total else 1.0

    def layer_densities(self) -> dict[str, float]:
        """Fraction of weights each mask keeps, keyed by parameter name."""
        return {name: float(mask.float().mean()) for name, mask in self._masks.items()}

    def metrics(self) -> dict[str, float]:
        """``density`` and ``sparsity`` of the prunable weights."""
        density = self.density()
        return {"density": density, "sparsity": 1.0 - density}

    def _update_masks(self, sparsity: float) -> None:
        if self.scope == "layer":
            for name, weight in self._weights.items():
                self._masks[name] = _keep_largest(weight.abs().flatten(), sparsity).view_as(weight)
            return
        magnitudes = torch.cat([weight.abs().flatten() for weight in self._weights.values()])
        keep = _keep_largest(magnitudes, sparsity)
        offset = 0
        for name, weight in self._weights.items():
            self._masks[name] = keep[offset : offset + weight.numel()].view_as(weight)
            offset += weight.numel()


def _keep_largest(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask zeroing exactly ``round(sparsity * n)`` smallest entries (stable ties)."""
    n_pruned = math.floor(sparsity * magnitudes.numel() + 0.5)
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if n_pruned:
        order = torch.argsort(magnitudes, stable=True)
        keep[order[:n_pruned]] = False
    return keep


class LayerwisePruningSchedulePhase(BaseTrainingPhase):
    """Drive every prunable compression layer to its own target density, gradually.

    SpArSe searches a pruning level per layer; compression layers that carry one
    (`target_density` and `prune_to(density)`: magnitude pruning, doped Kronecker) are
    moved from dense to that target on Zhu & Gupta's cubic schedule (arXiv 1710.01878)
    between `start_fraction` and `end_fraction` of training, every
    `update_every_steps` steps; the rest of the run fine-tunes with fixed masks.
    """

    def __init__(
        self, *, start_fraction: float = 0.1, end_fraction: float = 0.75, update_every_steps: int = 20
    ) -> None:
        _check_schedule_window(start_fraction, end_fraction, update_every_steps)
        self.start_fraction = start_fraction
        self.end_fraction = end_fraction
        self.update_every_steps = update_every_steps
        self._layers: dict[str, nn.Module] = {}
        self.begin_step = 0
        self.end_step = 0

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        self._layers = {
            name: m for name, m in model.named_modules() if hasattr(m, "prune_to") and hasattr(m, "target_density")
        }
        self.begin_step = round(self.start_fraction * total_steps)
        self.end_step = max(self.begin_step + 1, round(self.end_fraction * total_steps))

    def density_at(self, layer: nn.Module, step: int) -> float:
        """The schedule's density for `layer` after `step` optimiser steps."""
        return cubic_density(step, self.begin_step, self.end_step, float(layer.target_density))

    def on_step_end(self, step: int) -> None:
        steps_done = step + 1
        if not self.begin_step <= steps_done <= self.end_step:
            return
        if (steps_done - self.begin_step) % self.update_every_steps and steps_done != self.end_step:
            return
        for layer in self._layers.values():
            layer.prune_to(self.density_at(layer, steps_done))

    def on_train_end(self) -> None:
        for layer in self._layers.values():
            layer.prune_to(float(layer.target_density))

    def metrics(self) -> dict[str, float]:
        return {f"{name}.density": float(layer.density) for name, layer in self._layers.items()}
