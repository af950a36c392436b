"""The differentiable search: a supernet's weights and a sweep of architecture distributions, trained together.

MicroNets-style DNAS (Banbury et al., arXiv 2010.11267; the alternation is DARTS',
Liu et al., arXiv 1806.09055; Gumbel-softmax gates as in FBNet, Wu et al., arXiv
1812.03443):

1. **Warm-up.** ``warmup_epochs`` over the training split train the supernet's weights
   only, each step on one architecture drawn uniformly (single-path one-shot training,
   Guo et al., arXiv 1904.00420: the weights learn to serve the subnetworks that will
   be derived, not a soft mixture of them).
2. **Search.** ``search_epochs`` alternate, step by step, a weight step on a training
   batch (AdamW, the job's learning rate schedule; one architecture drawn from a
   member's distribution, run alone: ``BaseSupernet.path``) and an architecture step on
   validation batches (Adam on the architecture parameters alone, soft Gumbel-softmax
   gates). The temperature anneals exponentially from ``temperature_start`` to
   ``temperature_end``.
3. **Sweep.** One job gives several points of a front: the sweep's members are
   architecture distributions that share the supernet's weights, each with its own
   penalty strength lambda. Each architecture step gives every member its own share of
   the validation batch; each weight step samples its architecture from the members in
   turn.

A member's architecture loss is

    CE(validation) + lambda * sum_m log(E[c_m] / ref_m) + mu * sum_l max(0, E[c_l] / (margin * limit_l) - 1)

over the job's cost objectives m (normalised by the hypervolume reference point, so
lambda trades a relative cost change against cross-entropy) and its limits l (hinge
penalties with targets below the limits, as in DUCCIO-style target penalties, because
the derived network's real SRAM plan can exceed the smoothed working set,
:mod:`.costs`). Expected costs are taken under the softmax of the member's logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from sparse_nas.errors import SparseNASError
from sparse_nas.strategies.dnas.costs import SupernetCostModel, expected_of
from sparse_nas.strategies.dnas.plan import BaseSupernetPlan
from sparse_nas.strategies.dnas.supernet import ArchParameters, BaseSupernet, build_supernet
from sparse_nas.training import TrainConfig, learning_rate_at

if TYPE_CHECKING:
    from sparse_nas.datasets import DatasetSplits

ARCH_BETAS = (0.5, 0.999)
"""Adam moments of the architecture parameters (DARTS, arXiv 1806.09055, Sec. 3)."""
MIN_ARCH_BATCH = 8
"""Fewest validation samples a member's architecture step sees."""


class SearchCancelled(SparseNASError, RuntimeError):
    """The job was asked to stop during the search."""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one differentiable search (the job's ``dnas`` settings).

    Attributes:
        warmup_epochs: Weight-only epochs before the search.
        search_epochs: Epochs of alternating weight and architecture steps.
        arch_lr: Adam learning rate of the architecture parameters.
        temperature_start: Gumbel-softmax temperature at the start of the search.
        temperature_end: Temperature at its last step.
        budget_margin: Hinge targets as fractions of the limits.
        constraint_weight: mu, the weight of the hinge penalties.
    """

    warmup_epochs: int = 2
    search_epochs: int = 3
    arch_lr: float = 0.1
    temperature_start: float = 5.0
    temperature_end: float = 0.5
    budget_margin: float = 0.9
    constraint_weight: float = 10.0


@dataclass(frozen=True)
class SweepMember:
    """One searched architecture distribution.

    Attributes:
        penalty: Its lambda.
        logits: Its architecture parameters, by node.
        expected_costs: Expected costs under their softmax (:class:`~.costs.SupernetCostModel`).
    """

    penalty: float
    logits: dict[str, np.ndarray]
    expected_costs: dict[str, float]


@dataclass(frozen=True)
class SearchReport:
    """What a search found: one member per penalty, in the order given."""

    members: tuple[SweepMember, ...]
    search_seconds: float
    weight_steps: int
    arch_steps: int


def penalty_sweep(low: float, high: float, n: int) -> list[float]:
    """``n`` penalty strengths spaced geometrically from ``low`` to ``high`` (``low`` alone for one)."""
    if n == 1:
        return [float(low)]
    return [float(low * (high / low) ** (k / (n - 1))) for k in range(n)]


def arch_penalty(
    costs: Mapping[str, torch.Tensor],
    penalty: float,
    objectives: Sequence[str],
    reference: Mapping[str, float],
    limits: Mapping[str, float],
    config: SearchConfig,
) -> torch.Tensor:
    """The cost part of a member's architecture loss (see the module docstring)."""
    total = torch.zeros((), dtype=torch.float64)
    for metric in objectives:
        total = total + penalty * torch.log(costs[metric].clamp_min(1e-9) / reference[metric])
    for metric, limit in limits.items():
        total = total + config.constraint_weight * F.relu(costs[metric] / (config.budget_margin * limit) - 1.0)
    return total


def architecture_loss(
    supernet: BaseSupernet,
    member: ArchParameters,
    cost_model: SupernetCostModel,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float,
    penalty: float,
    objectives: Sequence[str],
    reference: Mapping[str, float],
    limits: Mapping[str, float],
    config: SearchConfig,
) -> torch.Tensor:
    """One member's architecture loss on a validation batch: cross-entropy of a Gumbel sample plus penalties."""
    ce = F.cross_entropy(supernet(x, member.sample(temperature)), y)
    costs = cost_model.expected(member.probabilities())
    return ce + arch_penalty(costs, penalty, objectives, reference, limits, config)


def temperature_at(config: SearchConfig, step: int, total_steps: int) -> float:
    """Exponential annealing from ``temperature_start`` (step 0) to ``temperature_end`` (last step)."""
    progress = step / max(total_steps - 1, 1)
    return config.temperature_start * (config.temperature_end / config.temperature_start) ** progress


class _Batches:
    """Endless seeded minibatches of a split, reshuffled at every pass."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        self.x, self.y, self.generator = x, y, generator
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def take(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + size > len(self.order):
            self.order = torch.randperm(len(self.y), generator=self.generator)
            self.position = 0
        rows = self.order[self.position : self.position + size]
        self.position += size
        return self.x[rows], self.y[rows]


def search(
    plan: BaseSupernetPlan,
    cost_model: SupernetCostModel,
    splits: DatasetSplits,
    *,
    penalties: Sequence[float],
    objectives: Sequence[str],
    reference: Mapping[str, float],
    limits: Mapping[str, float],
    config: SearchConfig,
    train_config: TrainConfig,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
) -> SearchReport:
    """Train a supernet and one architecture distribution per penalty (see the module docstring).

    Args:
        plan: The supernet plan.
        cost_model: Its differentiable costs on the job's device and runtime.
        splits: The job's dataset: weights train on ``train``, architectures on ``val``
            (on ``train`` too when the job holds out no validation split).
        penalties: One lambda per sweep member.
        objectives: The job's cost objectives (accuracy excluded).
        reference: Hypervolume reference value of each cost objective.
        limits: The job's limits.
        config: Search settings.
        train_config: The job's training settings: batch size, learning rate and its
            schedule, weight decay, AdamW betas, label smoothing, gradient clipping and
            memory format.
        seed: Seeds the supernet's initial weights, the batches and the Gumbel noise.
        should_stop: Polled once per epoch; True raises :class:`SearchCancelled`.

    Returns:
        The members in ``penalties`` order.
    """
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        supernet = build_supernet(plan)
        members = [ArchParameters(plan.nodes) for _ in penalties]
        generator = torch.Generator().manual_seed(seed)
        val_split = splits.val if len(splits.val) else splits.train
        train_x, val_x = splits.train.x, val_split.x
        if train_config.memory_format == "channels_last" and train_x.ndim == 4:
            # CPU depthwise convolutions run several times faster on NHWC tensors.
            supernet = supernet.to(memory_format=torch.channels_last)
            train_x = train_x.contiguous(memory_format=torch.channels_last)
            val_x = val_x.contiguous(memory_format=torch.channels_last)
        train = _Batches(train_x, splits.train.y, generator)
        val = _Batches(val_x, val_split.y, generator)
        batch = min(train_config.batch_size, len(splits.train))
        steps_per_epoch = max(len(splits.train) // batch, 1)
        warmup_steps = config.warmup_epochs * steps_per_epoch
        search_steps = config.search_epochs * steps_per_epoch
        total = warmup_steps + search_steps
        decay = [p for p in supernet.parameters() if p.ndim >= 2]
        rest = [p for p in supernet.parameters() if p.ndim < 2]
        weights = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train_config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=train_config.lr,
            betas=train_config.betas,
        )
        arch = torch.optim.Adam([p for m in members for p in m.parameters()], lr=config.arch_lr, betas=ARCH_BETAS)
        arch_batch = max(batch // len(members), MIN_ARCH_BATCH)
        supernet.train()
        for step in range(total):
            if step % steps_per_epoch == 0 and should_stop is not None and should_stop():
                raise SearchCancelled(f"stopped at step {step} of {total}")
            searching = step >= warmup_steps
            temperature = (
                temperature_at(config, step - warmup_steps, search_steps) if searching else config.temperature_start
            )
            for group in weights.param_groups:
                group["lr"] = learning_rate_at(train_config, step, total)
            x, y = train.take(batch)
            choice = members[step % len(members)].sample_choice(generator)
            loss = F.cross_entropy(supernet.path(x, choice), y, label_smoothing=train_config.label_smoothing)
            weights.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(supernet.parameters(), train_config.grad_clip_norm)
            weights.step()
            if not searching:
                continue
            arch.zero_grad(set_to_none=True)
            arch_loss = torch.zeros((), dtype=torch.float64)
            for penalty, member in zip(penalties, members, strict=True):
                xv, yv = val.take(arch_batch)
                arch_loss = arch_loss + architecture_loss(
                    supernet, member, cost_model, xv, yv, temperature=temperature, penalty=penalty,
                    objectives=objectives, reference=reference, limits=limits, config=config,
                )  # fmt: skip
            arch_loss.backward()
            arch.step()
        out = tuple(
            SweepMember(
                penalty=float(penalty),
                logits={name: v.detach().numpy().copy() for name, v in member.logits.items()},
                expected_costs=expected_of(cost_model, {n: v.detach().numpy() for n, v in member.logits.items()}),
            )
            for penalty, member in zip(penalties, members, strict=True)
        )
    return SearchReport(out, time.perf_counter() - start, total, search_steps)
