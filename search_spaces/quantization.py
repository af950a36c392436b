"""Fake quantisation: quantisation-aware training (QAT) and post-training quantisation (PTQ).

A model-level transform, not a compression method: `prepare_qat` wraps every
`nn.Linear`, `nn.Conv2d` and `BaseCompressedLinear` of a model in a `QuantizedLayer`
that, in each forward,

- fake-quantises its input activation per tensor, asymmetric int8, with the range
  calibrated by an exponential moving average of the observed min / max
  (`ActivationFakeQuantizer`; Jacob et al., "Quantization and Training of Neural
  Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018,
  arXiv 1712.05877, Sec. 3: EMA ranges, zero exactly representable);
- quantises each stored weight tensor of the layer (for compressed layers every
  parameter of the structure: factors, blocks, vectors; never the bias) either
  per output row, symmetric, to ``bits`` in {8, 4} (scale = max|w_row| / (2^(bits-1) - 1),
  zero point 0, the TFLite int8 weight scheme) or, for ``bits=2``, to ternary values
  {-a, 0, a} per tensor (Ternary Weight Networks, Li et al. 2016, arXiv 1605.04711,
  Eq. (5)-(6): threshold 0.7 * mean|w|, a = mean of the |w| above it), the scheme the
  HybridNet / ternary MobileNets work of Gope et al. (arXiv 2004.01401) builds on;
- passes gradients through the rounding with the straight-through estimator
  (``weight_method="ste"``), or blends (``"alpha_blend"``): the layer sees
  ``alpha * Q(w) + (1 - alpha) * w`` with no gradient through Q, alpha ramped from 0
  to 1 by the trainer through `set_alpha` (Liu & Mattina, "Learning low-precision
  neural networks without Straight-Through Estimator (STE)", IJCAI 2019,
  arXiv 1903.01061).

`quantize_post_training` calibrates activation ranges on data, then switches weight
quantisation on, and returns an eval-mode copy. Biases stay float here: the int32 bias
(scale = input scale x weight scale) is derived at export, which reads the scales and
zero points through `ActivationFakeQuantizer.scale` / `zero_point` and
`QuantizedLayer.weight_scales`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from search_spaces.compression._base import BaseCompressedLinear
from search_spaces.errors import InvalidCompressionError

WeightMethod = Literal["ste", "alpha_blend"]
WEIGHT_BITS = (8, 4, 2)
TWN_THRESHOLD_FACTOR = 0.7  # Li et al. 2016, arXiv 1605.04711, Eq. (6)

__all__ = [
    "ActivationFakeQuantizer",
    "QuantizedLayer",
    "fake_quantize",
    "prepare_qat",
    "quantize_post_training",
    "quantize_weight_per_channel",
    "quantized_layers",
    "set_alpha",
    "ternarize",
]


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantise-dequantise with the straight-through estimator.

    ``out = (clamp(round(x / s) + z, qmin, qmax) - z) * s``. The gradient is 1 where x
    lies inside the representable range ``[(qmin - z) s, (qmax - z) s]`` and 0 outside
    (the clipped STE of Jacob et al., arXiv 1712.05877).

    Args:
        x: any shape.
        scale: broadcastable to x, positive.
        zero_point: broadcastable to x, integral values.
        qmin: smallest integer code.
        qmax: largest integer code.
    """
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    clipped = torch.clamp(x, low, high)
    q = (torch.clamp(torch.round(clipped / scale) + zero_point, qmin, qmax) - zero_point) * scale
    return clipped + (q - clipped).detach()


def quantize_weight_per_channel(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row fake quantisation (STE) of a weight tensor.

    Args:
        w: (rows, ...) for ndim >= 2 (one scale per row, the output axis), or any 1-D /
            0-D tensor (one scale).
        bits: 8 or 4; codes in [-(2^(bits-1) - 1), 2^(bits-1) - 1], zero point 0.

    Returns:
        (w_q, scale): w_q of w's shape, error at most scale / 2 per element; scale
        (rows,) for ndim >= 2 else (), equal to max|w_row| / (2^(bits-1) - 1) (1 for an
        all-zero row, which quantises to zeros).
    """
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().reshape(w.shape[0], -1) if w.ndim >= 2 else w.detach().reshape(1, -1)
    max_abs = flat.abs().amax(dim=1)
    scale = torch.where(max_abs > 0, max_abs / qmax, torch.ones_like(max_abs))
    shape = (-1,) + (1,) * (w.ndim - 1) if w.ndim >= 2 else ()
    s = scale.reshape(shape)
    w_q = fake_quantize(w, s, torch.zeros_like(s), -qmax, qmax)
    return w_q, scale if w.ndim >= 2 else scale.reshape(())


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary weights {-a, 0, a} per tensor (TWN, Li et al. 2016, arXiv 1605.04711).

    delta = 0.7 * mean|w| (their Eq. (6)); a = mean of |w| over |w| > delta (Eq. (5));
    w_t = a * sign(w) * 1(|w| > delta). The gradient passes straight through.

    Args:
        w: any shape.

    Returns:
        (w_t, a): w_t of w's shape with at most three distinct values; a, a 0-D tensor
        (0 when no weight exceeds delta).
    """
    mag = w.detach().abs()
    delta = TWN_THRESHOLD_FACTOR * mag.mean()
    keep = mag > delta
    alpha = (mag * keep).sum() / keep.sum().clamp_min(1)
    w_t = alpha * torch.sign(w.detach()) * keep
    return w + (w_t - w).detach(), alpha


class ActivationFakeQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantisation of an activation with an EMA range observer.

    While `observer_enabled` and in training mode, each forward updates the range:
    the first batch sets ``min_val`` / ``max_val``; later ones move them by
    ``momentum`` towards the batch min / max (Jacob et al., arXiv 1712.05877, Sec. 3.1),
    or, with ``momentum=None``, keep the running min / max (calibration for PTQ). Eval
    mode never changes the range. The range is widened to include 0 so that zero (ReLU
    outputs, padding) is exact. Until a range exists the input passes unchanged.

    Args:
        bits: code width; codes in [-2^(bits-1), 2^(bits-1) - 1] (int8: [-128, 127]).
        momentum: EMA weight of a new batch in (0, 1], or None for the running extremes.

    Buffers:
        min_val, max_val: 0-D float, +inf / -inf until the first observation.
    """

    def __init__(self, bits: int = 8, momentum: float | None = 0.01) -> None:
        super().__init__()
        if bits not in (8, 4):
            raise InvalidCompressionError(f"activation bits must be 8 or 4, got {bits!r}")
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise InvalidCompressionError(f"momentum must be in (0, 1] or None, got {momentum!r}")
        self.bits = bits
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.momentum = momentum
        self.observer_enabled = True
        self.fake_quant_enabled = True
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    @property
    def calibrated(self) -> bool:
        """Whether a range has been observed."""
        return bool(torch.isfinite(self.min_val))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range with a batch (any shape)."""
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if not self.calibrated:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        elif self.momentum is None:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / (self.qmax - self.qmin), min=torch.finfo(torch.float32).eps)
        zero_point = torch.clamp(self.qmin - torch.round(lo / scale), self.qmin, self.qmax)
        return scale, zero_point

    @property
    def scale(self) -> float:
        """Real value of one code step; raises before calibration."""
        self._require_calibrated()
        return float(self._qparams()[0])

    @property
    def zero_point(self) -> int:
        """Code of the real value 0, in [qmin, qmax]; raises before calibration."""
        self._require_calibrated()
        return int(self._qparams()[1])

    def _require_calibrated(self) -> None:
        if not self.calibrated:
            raise InvalidCompressionError("activation quantiser has no range yet: run data through it first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any shape -> same shape, fake-quantised when enabled and calibrated."""
        if self.training and self.observer_enabled:
            self.observe(x)
        if not (self.fake_quant_enabled and self.calibrated):
            return x
        scale, zero_point = self._qparams()
        return fake_quantize(x, scale.to(x.dtype), zero_point.to(x.dtype), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        low, high = float(self.min_val), float(self.max_val)
        return f"bits={self.bits}, momentum={self.momentum}, range=({low:.4g}, {high:.4g})"


def _weight_names(module: nn.Module) -> list[str]:
    """Names of the stored weight tensors of a layer: never biases or 0-D parameters."""
    if isinstance(module, BaseCompressedLinear):
        return [n for n, p in module.named_parameters() if p.ndim >= 1 and n.rsplit(".", 1)[-1] != "bias"]
    return ["weight"]


class QuantizedLayer(nn.Module):
    """A Linear, Conv2d or BaseCompressedLinear run with fake-quantised input and weights.

    The wrapped layer keeps its own float parameters (what the optimiser updates); each
    forward substitutes quantised copies with `torch.func.functional_call`, so any
    layer whose forward reads its parameters works, compressed structures included.
    Attributes the wrapper does not have are read from the wrapped layer
    (``in_features``, ``weight_spec()``, ``prune_to()``, ...).

    Args:
        module: the layer.
        bits: weight bits: 8 or 4 (per-row symmetric) or 2 (ternary, TWN).
        weight_method: ``"ste"`` or ``"alpha_blend"`` (see the module docstring).
        activation_bits: bits of the input quantiser, or None for weight-only.
        momentum: EMA momentum of the input observer (see `ActivationFakeQuantizer`).
    """

    def __init__(
        self,
        module: nn.Module,
        bits: int = 8,
        weight_method: WeightMethod = "ste",
        activation_bits: int | None = 8,
        momentum: float | None = 0.01,
    ) -> None:
        super().__init__()
        if bits not in WEIGHT_BITS:
            raise InvalidCompressionError(f"bits must be one of {WEIGHT_BITS}, got {bits!r}")
        if weight_method not in ("ste", "alpha_blend"):
            raise InvalidCompressionError(f"weight_method must be 'ste' or 'alpha_blend', got {weight_method!r}")
        if not isinstance(module, nn.Linear | nn.Conv2d | BaseCompressedLinear):
            raise InvalidCompressionError(
                f"QuantizedLayer wraps nn.Linear, nn.Conv2d or BaseCompressedLinear, got {type(module).__name__}"
            )
        self.module = module
        self.bits = bits
        self.weight_method = weight_method
        self.alpha = 1.0
        self.weight_quant_enabled = True
        self.input_quantizer = None if activation_bits is None else ActivationFakeQuantizer(activation_bits, momentum)
        self.weight_names = _weight_names(module)
        if isinstance(module, BaseCompressedLinear):
            module.weight_bits = bits

    @property
    def weight_bits(self) -> int:
        """Bits of the stored weights once deployed."""
        return self.bits

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def set_alpha(self, alpha: float) -> None:
        """Blend factor of ``alpha_blend`` in [0, 1]: 0 is float weights, 1 quantised."""
        if not 0.0 <= alpha <= 1.0:
            raise InvalidCompressionError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def quantize_tensor(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantised w with STE, scale): per-row scales for 8/4 bits, one for ternary."""
        return ternarize(w) if self.bits == 2 else quantize_weight_per_channel(w, self.bits)

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """Parameter name -> the tensor forward uses in place of it (blended if alpha < 1)."""
        params = dict(self.module.named_parameters())
        out = {}
        for name in self.weight_names:
            w = params[name]
            q, _ = self.quantize_tensor(w)
            if self.weight_method == "alpha_blend":
                # Liu & Mattina: no gradient through Q; weights learn through (1 - alpha) w.
                q = self.alpha * q.detach() + (1.0 - self.alpha) * w
            out[name] = q
        return out

    def weight_scales(self) -> dict[str, torch.Tensor]:
        """Parameter name -> scale: (rows,) per-row for 8/4 bits, 0-D ternary magnitude."""
        params = dict(self.module.named_parameters())
        return {name: self.quantize_tensor(params[name])[1].detach() for name in self.weight_names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's forward on the fake-quantised input with quantised weights."""
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if not self.weight_quant_enabled:
            return self.module(x)
        return functional_call(self.module, self.quantized_weights(), (x,))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, weight_method={self.weight_method}, alpha={self.alpha}"


_QUANTIZABLE = (nn.Linear, nn.Conv2d, BaseCompressedLinear)


def prepare_qat(
    model: nn.Module,
    bits: int = 8,
    weight_method: WeightMethod = "ste",
    activation_bits: int | None = 8,
    momentum: float | None = 0.01,
) -> nn.Module:
    """Wrap every Linear, Conv2d and BaseCompressedLinear of `model` in a `QuantizedLayer`.

    Modifies `model` in place (the wrappers keep the original parameters, so an
    optimiser built before or after sees the same tensors) and returns it; when `model`
    itself is such a layer the wrapper is returned. Layers inside a BaseCompressedLinear
    are not wrapped separately, and layers already wrapped are left alone. Sets
    ``weight_bits`` of every BaseCompressedLinear so its `weight_spec` reports `bits`.
    With ``alpha_blend``, alpha starts at 0 (float weights); ramp it with `set_alpha`.

    Args:
        model: any module.
        bits: weight bits, 8 or 4 (per-row symmetric) or 2 (ternary).
        weight_method: ``"ste"`` or ``"alpha_blend"``.
        activation_bits: input activation bits of each layer, or None for weight-only.
        momentum: EMA momentum of the activation observers.
    """

    def wrap(m: nn.Module) -> QuantizedLayer:
        layer = QuantizedLayer(m, bits, weight_method, activation_bits, momentum)
        if weight_method == "alpha_blend":
            layer.set_alpha(0.0)
        return layer

    if isinstance(model, _QUANTIZABLE):
        return wrap(model)

    def visit(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, QuantizedLayer):
                continue
            if isinstance(child, _QUANTIZABLE):
                setattr(parent, name, wrap(child))
            else:
                visit(child)

    visit(model)
    return model


def quantized_layers(model: nn.Module) -> list[QuantizedLayer]:
    """The `QuantizedLayer`s of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, QuantizedLayer)]


def set_alpha(model: nn.Module, alpha: float) -> None:
    """Set the alpha-blending factor of every `QuantizedLayer` in `model`."""
    for layer in quantized_layers(model):
        layer.set_alpha(alpha)


@torch.no_grad()
def quantize_post_training(
    model: nn.Module,
    data: Iterable[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]],
    bits: int = 8,
    activation_bits: int = 8,
) -> nn.Module:
    """Post-training quantisation: a fake-quantised, eval-mode copy of `model`.

    Runs `data` through a float copy in eval mode (BatchNorm uses its running
    statistics, dropout is off) while every layer's input observer keeps the running
    min / max, then freezes those ranges and switches weight and activation
    quantisation on. `model` is not modified.

    Args:
        model: a trained float model.
        data: calibration batches: tensors, or tuples / lists whose first item is the input.
        bits: weight bits (8, 4 or 2).
        activation_bits: activation bits.

    Returns:
        The quantised copy, in eval mode.
    """
    qmodel = prepare_qat(copy.deepcopy(model), bits, "ste", activation_bits, momentum=None)
    layers = quantized_layers(qmodel)
    qmodel.eval()
    for layer in layers:
        layer.weight_quant_enabled = False
        layer.input_quantizer.fake_quant_enabled = False
        layer.input_quantizer.train()
    seen = 0
    for batch in data:
        qmodel(batch[0] if isinstance(batch, tuple | list) else batch)
        seen += 1
    if not seen:
        raise InvalidCompressionError("quantize_post_training needs at least one calibration batch in data")
    for layer in layers:
        layer.weight_quant_enabled = True
        layer.input_quantizer.fake_quant_enabled = True
        layer.input_quantizer.observer_enabled = False
        layer.input_quantizer.eval()
    return qmodel
