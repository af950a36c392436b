"""Unstructured pruning with a per-layer threshold: magnitude masks and learned thresholds.

Two `BaseCompressedLinear` methods whose weight is a dense matrix times a 0/1 mask:

- ``"magnitude_pruning"`` (`MagnitudePrunedLinear`): the mask keeps the largest-magnitude
  weights; whoever drives training (a sparse_nas phase) calls `prune_to(density)` on a
  schedule, typically `cubic_density` (Zhu & Gupta 2017, arXiv 1710.01878).
- ``"learned_threshold"`` (`LearnedThresholdLinear`): a learnable per-layer threshold t;
  training sees a sigmoid-relaxed mask so that gradients reach t, deployment the hard
  mask |w| > t (after TinyLSTMs, Fedorov et al. 2020, arXiv 2005.11138), with a
  density penalty the trainer adds to its loss.

Both report `hw_models.Sparse` with the density read from the real (hard) mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hw_models import Sparse
from search_spaces.compression._base import BaseCompressedLinear, kaiming_uniform_
from search_spaces.compression._registry import register_compression
from search_spaces.errors import InvalidCompressionError

# Four consecutive int8 weights of a row fill one 32-bit word, the unit a Cortex-M
# kernel loads, so a (1, 4) block keeps sparse loads aligned without index per weight.
DEFAULT_BLOCK_SHAPE = (1, 4)


def cubic_density(
    step: int, start_step: int, end_step: int, final_density: float, initial_density: float = 1.0
) -> float:
    """Target density after `step` optimiser steps by Zhu & Gupta's cubic schedule.

    Zhu & Gupta 2017, "To prune, or not to prune", arXiv 1710.01878, Eq. (1), written
    for density d = 1 - s: ``d_t = d_f + (d_i - d_f) * (1 - (t - t_0) / (n dt)) ** 3``
    for ``t_0 <= t <= t_0 + n dt``, ``d_i`` before and ``d_f`` after, with
    ``t_0 = start_step`` and ``t_0 + n dt = end_step``. The paper updates masks every
    ``dt`` steps; the caller decides when to call `prune_to` with this value.

    Args:
        step: optimiser steps completed.
        start_step: ``t_0``, where pruning starts.
        end_step: ``t_0 + n dt``, where `final_density` is reached; ``>= start_step``.
        final_density: ``d_f`` in [0, 1] (0: a doped Kronecker layer whose searched
            doping is none; its overlay is pruned away entirely).
        initial_density: ``d_i`` in [final_density, 1].

    Returns:
        The density in [final_density, initial_density].
    """
    if end_step < start_step:
        raise InvalidCompressionError(f"end_step must be >= start_step={start_step}, got {end_step}")
    if not 0.0 <= final_density <= 1.0:
        raise InvalidCompressionError(f"final_density must be in [0, 1], got {final_density}")
    if not final_density <= initial_density <= 1.0:
        raise InvalidCompressionError(
            f"initial_density must be in [final_density={final_density}, 1], got {initial_density}"
        )
    if step < start_step:
        return initial_density
    if step >= end_step:
        return final_density
    remaining = 1.0 - (step - start_step) / (end_step - start_step)
    return final_density + (initial_density - final_density) * remaining**3


def _check_density(density: float, field: str = "density") -> float:
    if not 0.0 < density <= 1.0:
        raise InvalidCompressionError(f"{field} must be in (0, 1], got {density!r}")
    return float(density)


def _check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    if fmt not in allowed:
        raise InvalidCompressionError(f"format must be one of {', '.join(allowed)}; got {fmt!r}")
    return fmt


def _sparse_structure(mask: torch.Tensor, fmt: str, block_shape: tuple[int, int]) -> Sparse:
    """hw_models Sparse for a 0/1 mask (out, in); an all-zero mask is costed as one value.

    hw_models needs a positive density and floors the stored count at one value, so an
    empty layer is reported as 1 / numel (block: 1 / blocks), matching that count.
    """
    if fmt == "block":
        blocks = _block_any(mask, block_shape)
        return Sparse(max(int(blocks.sum()), 1) / blocks.numel(), "block", block_shape)
    return Sparse(max(int(mask.sum()), 1) / mask.numel(), fmt)


def _block_any(mask: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """(ceil(m / bh), ceil(n / bw)) bool: does each block hold any kept weight."""
    return _block_reduce(mask.float(), block_shape) > 0


def _block_reduce(values: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """Sum of `values` (m, n) over each (bh, bw) block, zero-padding the edges."""
    bh, bw = block_shape
    m, n = values.shape
    padded = nn.functional.pad(values, (0, -n % bw, 0, -m % bh))
    rows, cols = padded.shape[0] // bh, padded.shape[1] // bw
    return padded.reshape(rows, bh, cols, bw).sum(dim=(1, 3))


def _keep_largest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of `scores`' shape keeping exactly `keep` largest (ties: lower index)."""
    flat = scores.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[order[:keep]] = True
    return out.view_as(scores)


def magnitude_mask(weight: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
    """Mask keeping the ``max(1, round(density * numel))`` largest |weight * mask|.

    Weights already pruned rank last, so a schedule of calls never regrows them.
    """
    magnitude = (weight * mask).abs()
    return _keep_largest(magnitude, max(1, math.floor(density * magnitude.numel() + 0.5)))


@register_compression("magnitude_pruning")
class MagnitudePrunedLinear(BaseCompressedLinear):
    """W = weight * mask, the mask keeping the largest-magnitude weights of this layer.

    The per-layer threshold is implicit: `prune_to(d)` keeps the ``round(d * m * n)``
    largest |w| (Zhu & Gupta 2017, arXiv 1710.01878, who prune each layer by magnitude
    on the cubic schedule of `cubic_density`). The mask is applied in every forward and
    the pruned entries of `weight` are zeroed when the mask is set, so an optimiser step
    cannot bring a pruned weight back: its gradient through the mask is zero, and a
    later `prune_to` ranks the masked weights (pruned ones at 0) again.

    With ``format="block"`` the mask keeps whole (bh, bw) blocks ranked by their L1
    norm, and `prune_to(d)` keeps ``round(d * blocks)`` blocks, the density hw_models
    reads for block storage.

    Args:
        in_features: n, columns of W.
        out_features: m, rows of W.
        bias: learn an additive bias.
        density: target fraction of weights (of blocks, for ``block``) kept, in (0, 1].
            Only used when ``prune_at_init`` is true or by `prune_to()` with no argument;
            a training phase normally drives `prune_to` on a schedule towards it.
        format: storage hw_models costs: ``csr``, ``bitmask`` or ``block``.
        block_shape: (rows, cols) of a block for ``block``.
        prune_at_init: prune to `density` right away (one-shot pruning of the random
            initialisation); otherwise the mask is dense until `prune_to` is called.

    Buffers:
        mask: (out_features, in_features) float 0/1, saved in the state dict.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        density: float = 0.5,
        format: str = "csr",
        block_shape: tuple[int, int] = DEFAULT_BLOCK_SHAPE,
        prune_at_init: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.target_density = _check_density(density)
        self.format = _check_format(format, Sparse.FORMATS)
        block_shape = tuple(int(b) for b in block_shape)
        if len(block_shape) != 2 or min(block_shape) < 1:
            raise InvalidCompressionError(f"block_shape must be two positive ints, got {block_shape!r}")
        self.block_shape: tuple[int, int] = (block_shape[0], block_shape[1])
        self.weight = nn.Parameter(kaiming_uniform_(torch.empty(out_features, in_features), in_features))
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)
        self.register_buffer("mask", torch.ones(out_features, in_features))
        if prune_at_init:
            self.prune_to(self.target_density)

    @torch.no_grad()
    def prune_to(self, density: float | None = None) -> float:
        """Recompute the mask to keep the largest-magnitude weights; returns the new density.

        Ranks |weight * mask| of this layer (or the L1 norms of its blocks), so weights
        already pruned rank last. Keeps ``max(1, round(density * count))`` entries,
        where count is the number of weights (blocks for ``block``), and zeroes the
        pruned weights in place.

        Args:
            density: fraction to keep, in (0, 1]; defaults to the `density` knob.
        """
        density = self.target_density if density is None else _check_density(density)
        magnitude = (self.weight * self.mask).abs()
        if self.format == "block":
            scores = _block_reduce(magnitude, self.block_shape)
            kept = _keep_largest(scores, max(1, math.floor(density * scores.numel() + 0.5)))
            bh, bw = self.block_shape
            full = kept.repeat_interleave(bh, dim=0).repeat_interleave(bw, dim=1)
            mask = full[: self.out_features, : self.in_features]
        else:
            mask = magnitude_mask(self.weight, self.mask, density)
        self.mask.copy_(mask)
        self.weight.mul_(self.mask)
        return self.density

    @property
    def density(self) -> float:
        """Fraction of weights the current mask keeps (elements, for every format)."""
        return float(self.mask.sum()) / self.mask.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features) with the masked weight."""
        return nn.functional.linear(x, self.weight * self.mask, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def weight_structure(self) -> Sparse:
        return _sparse_structure(self.mask, self.format, self.block_shape)

    def stored_parameters(self) -> int:
        """Values stored: kept weights (whole kept blocks for ``block``), at least one."""
        if self.format == "block":
            bh, bw = self.block_shape
            return max(int(_block_any(self.mask, self.block_shape).sum()), 1) * bh * bw
        return max(int(self.mask.sum()), 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}, format={self.format}"


@register_compression("learned_threshold")
class LearnedThresholdLinear(BaseCompressedLinear):
    """W = weight * m(weight, t) with a learnable per-layer threshold t.

    The pruning of TinyLSTMs (Fedorov et al. 2020, "TinyLSTMs: Efficient Neural Speech
    Enhancement for Hearing Aids", Interspeech 2020, arXiv 2005.11138) as issue 4 states
    it: a per-layer threshold on |w| whose hard indicator is relaxed by a sigmoid so that
    the threshold is learned by gradient descent:

    - training: ``m = sigmoid((|w| - t) / tau)``, so dL/dt and dL/dw are defined;
    - eval / deployment: ``m = 1(|w| > t)``, the hard mask that hw_models costs.

    Choices of this module, not taken from the paper (its method section could not be
    consulted when this was written): t is a plain scalar parameter in the units of the
    weights, initialised at 0 (every non-zero weight kept; a negative t keeps everything
    too); the temperature is relative, ``tau = temperature * mean(|w|)`` (detached), so
    one knob value suits layers of any fan-in; and the target density is reached through
    the loss term `density_penalty`, which the trainer adds with a weight of its choice.

    Args:
        in_features: n, columns of W.
        out_features: m, rows of W.
        bias: learn an additive bias.
        density: default target of `density_penalty`, in (0, 1].
        temperature: tau relative to mean |w|; > 0. Smaller is closer to the hard mask.
        format: storage hw_models costs, ``csr`` or ``bitmask``.
    """

    FORMATS = ("csr", "bitmask")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        density: float = 0.5,
        temperature: float = 0.1,
        format: str = "csr",
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.target_density = _check_density(density)
        if not temperature > 0:
            raise InvalidCompressionError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.format = _check_format(format, self.FORMATS)
        self.weight = nn.Parameter(kaiming_uniform_(torch.empty(out_features, in_features), in_features))
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)
        self.threshold = nn.Parameter(torch.zeros(()))

    def soft_mask(self) -> torch.Tensor:
        """(out, in) sigmoid((|w| - t) / tau), differentiable in w and t."""
        tau = self.temperature * self.weight.detach().abs().mean().clamp_min(torch.finfo(self.weight.dtype).tiny)
        return torch.sigmoid((self.weight.abs() - self.threshold) / tau)

    def hard_mask(self) -> torch.Tensor:
        """(out, in) bool 1(|w| > t), the deployed mask."""
        return self.weight.detach().abs() > self.threshold.detach()

    def mask(self) -> torch.Tensor:
        """The mask forward uses: soft in training mode, hard (as float) in eval mode."""
        return self.soft_mask() if self.training else self.hard_mask().to(self.weight.dtype)

    @property
    def density(self) -> float:
        """Fraction of weights the hard mask keeps."""
        return float(self.hard_mask().float().mean())

    def density_penalty(self, target_density: float | None = None) -> torch.Tensor:
        """Scalar loss term ``relu(mean(soft_mask) - target) ** 2``.

        Zero once the relaxed density is at or below the target, so it only pushes
        density down; its gradient reaches t (raising it) and the weights.

        Args:
            target_density: in (0, 1]; defaults to the `density` knob.
        """
        target = self.target_density if target_density is None else _check_density(target_density, "target_density")
        return torch.relu(self.soft_mask().mean() - target) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features) with the masked weight."""
        return nn.functional.linear(x, self.weight * self.mask(), self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The matrix forward uses now (soft-masked in training mode, hard in eval)."""
        return self.weight * self.mask()

    def weight_structure(self) -> Sparse:
        return _sparse_structure(self.hard_mask(), self.format, (1, 1))

    def stored_parameters(self) -> int:
        """Weights the hard mask keeps (at least one, as hw_models counts)."""
        return max(int(self.hard_mask().sum()), 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}, format={self.format}"
