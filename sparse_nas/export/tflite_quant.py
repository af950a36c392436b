"""Int8 quantisation of a :class:`~sparse_nas.export.tflite_graph.LoweredGraph`, and its integer reference.

The scheme is TFLite's int8 quantisation specification
(https://ai.google.dev/edge/litert/models/quantization_spec): activations int8
asymmetric per tensor, weights int8 symmetric per output channel (zero point 0, values in
[-127, 127]), biases int32 with scale ``input_scale * weight_scale[c]`` and zero point 0.
Activation ranges are the min / max of the float graph over calibration samples,
widened to contain 0. Pools, pad and reshape keep their input's parameters (TFLite
requires it of max pooling and reshape); ``mean`` keeps them too; softmax outputs use
scale 1/256, zero point -128, as the spec fixes.

:func:`int8_forward` runs the quantised graph with TFLite's integer arithmetic
(``QuantizeMultiplier``, ``MultiplyByQuantizedMultiplier``,
``SaturatingRoundingDoublingHighMul``, ``RoundingDivideByPOT`` of
tensorflow/lite/kernels/internal/common.h, and the reference int8 kernels) on the
float32 scales the flatbuffer stores, so its outputs are what the tflite-micro
interpreter computes, bit for bit on the families tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparse_nas.export.tflite_graph import (
    LoweredGraph,
    UnsupportedTFLiteLayerError,
    _patches,
    float_op,
    prepare_inputs,
)

SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128  # exact in float32
_SAME_PARAMS = ("max_pool2d", "avg_pool2d", "mean", "reshape", "pad")


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine int8 parameters: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x / self.scale) + self.zero_point, -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)


@dataclass
class QuantizedGraph:
    """A lowered graph with int8 tensors: ``qparams`` per tensor, int8 weights and int32 biases per op index."""

    graph: LoweredGraph
    qparams: list[QParams]
    weights_q: dict[int, np.ndarray]
    weight_scales: dict[int, np.ndarray]
    biases_q: dict[int, np.ndarray]
    calibration_samples: int


def _range_qparams(lo: float, hi: float) -> QParams:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    # The flatbuffer stores float32 scales and kernels derive their multipliers from those.
    scale = float(np.float32((hi - lo) / 255.0))
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return QParams(scale, zero_point)


def quantize_graph(g: LoweredGraph, calibration_nchw: np.ndarray, batch_size: int = 256) -> QuantizedGraph:
    """Calibrate activation ranges on float dataset inputs ``(N, C, H, W)`` and quantise ``g``."""
    calibration_nchw = prepare_inputs(g, calibration_nchw)
    lo = np.full(len(g.shapes), np.inf)
    hi = np.full(len(g.shapes), -np.inf)
    for start in range(0, len(calibration_nchw), batch_size):
        batch = calibration_nchw[start : start + batch_size]
        values: list[np.ndarray | None] = [None] * len(g.shapes)
        values[g.input] = np.ascontiguousarray(batch.transpose(0, 2, 3, 1), dtype=np.float32)
        for op in g.ops:
            values[op.output] = float_op(op, [values[i] for i in op.inputs])
        for t, v in enumerate(values):
            if v is not None:
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    qparams: list[QParams | None] = [None] * len(g.shapes)
    qparams[g.input] = _range_qparams(lo[g.input], hi[g.input])
    weights_q, weight_scales, biases_q = {}, {}, {}
    for i, op in enumerate(g.ops):
        if op.kind in _SAME_PARAMS:
            qparams[op.output] = qparams[op.inputs[0]]
        elif op.kind == "softmax":
            qparams[op.output] = QParams(SOFTMAX_SCALE, SOFTMAX_ZERO_POINT)
        else:
            qparams[op.output] = _range_qparams(lo[op.output], hi[op.output])
        if op.weight is not None:
            channel_axis = 3 if op.kind == "depthwise_conv2d" else 0
            reduce_axes = tuple(a for a in range(op.weight.ndim) if a != channel_axis)
            max_abs = np.abs(op.weight).max(axis=reduce_axes).astype(np.float64)
            scales = np.where(max_abs > 0, max_abs / 127.0, 1.0).astype(np.float32).astype(np.float64)
            shape = [1] * op.weight.ndim
            shape[channel_axis] = -1
            weights_q[i] = np.clip(np.round(op.weight / scales.reshape(shape)), -127, 127).astype(np.int8)
            weight_scales[i] = scales
            bias_scale = qparams[op.inputs[0]].scale * scales
            biases_q[i] = np.clip(np.round(op.bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
    if any(q is None for q in qparams):
        raise UnsupportedTFLiteLayerError("a tensor of the lowered graph is produced by no op")
    return QuantizedGraph(g, qparams, weights_q, weight_scales, biases_q, len(calibration_nchw))  # type: ignore[arg-type]


# --- TFLite's fixed-point arithmetic (tensorflow/lite/kernels/internal/common.h) ---------


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``QuantizeMultiplier``: int32 fixed-point multipliers in [2^30, 2^31) and power-of-two shifts."""
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    fraction, shift = np.frexp(real)
    q = np.round(fraction * (1 << 31)).astype(np.int64)
    overflow = q == (1 << 31)
    q = np.where(overflow, q // 2, q)
    shift = np.where(overflow, shift + 1, shift)
    small = shift < -31
    q = np.where(small | (real == 0), 0, q)
    shift = np.where(small | (real == 0), 0, shift)
    return q.astype(np.int64), shift.astype(np.int64)


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int64 arrays holding int32 values."""
    ab = a.astype(np.int64) * b.astype(np.int64)
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    out = np.where(s >= 0, s >> 31, -((-s) >> 31))  # C++ division truncates toward zero
    return np.where((a == -(2**31)) & (b == -(2**31)), 2**31 - 1, out)


def _rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``MultiplyByQuantizedMultiplier`` (double rounding), elementwise with broadcasting."""
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return _rounding_divide_by_pot(_srdhm(x.astype(np.int64) * (np.int64(1) << left), multiplier), right)


def _act_range(q: QParams, activation: str) -> tuple[int, int]:
    lo, hi = -128, 127
    # CalculateActivationRangeQuantized: TfLiteRound rounds half away from zero.
    if activation in ("relu", "relu6"):
        lo = max(lo, q.zero_point)
    if activation == "relu6":
        hi = min(hi, q.zero_point + int(np.floor(6.0 / q.scale + 0.5)))
    return lo, hi


def int8_forward(qg: QuantizedGraph, x_q: np.ndarray) -> np.ndarray:
    """The quantised graph on int8 NHWC inputs ``(N, H, W, C)``; returns the int8 output tensor."""
    g = qg.graph
    values: list[np.ndarray | None] = [None] * len(g.shapes)
    values[g.input] = x_q.astype(np.int8)
    last_use = {t: max((i for i, op in enumerate(g.ops) if t in op.inputs), default=-1) for t in range(len(g.shapes))}
    for i, op in enumerate(g.ops):
        xs = [values[t] for t in op.inputs]
        qin, qout = qg.qparams[op.inputs[0]], qg.qparams[op.output]
        x = xs[0]
        if op.kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            xi = x.astype(np.int64) - qin.zero_point
            w = qg.weights_q[i].astype(np.int64)
            if op.kind == "fully_connected":
                acc = xi @ w.T
            else:
                # Padding reads the input zero point, i.e. 0 after the offset.
                p = _patches(xi, *op.kernel, *op.stride, op.padding, 0)
                if op.kind == "conv2d":
                    acc = np.einsum("nhwijc,oijc->nhwo", p, w, optimize=True)
                else:
                    mult = w.shape[3] // x.shape[3]
                    acc = np.einsum("nhwijc,ijc->nhwc", np.repeat(p, mult, axis=-1), w[0], optimize=True)
            acc = acc + qg.biases_q[i]
            m, s = quantize_multiplier(qin.scale * qg.weight_scales[i] / qout.scale)
            y = multiply_by_quantized_multiplier(acc, m, s) + qout.zero_point
            lo, hi = _act_range(qout, op.activation)
            y = np.clip(y, lo, hi)
        elif op.kind == "max_pool2d":
            y = _patches(x, *op.kernel, *op.stride, "VALID", 0).max(axis=(3, 4))
        elif op.kind == "avg_pool2d":
            total = _patches(x.astype(np.int64), *op.kernel, *op.stride, "VALID", 0).sum(axis=(3, 4))
            count = op.kernel[0] * op.kernel[1]
            # Round half away from zero, as the reference int8 average pool does.
            y = np.where(total > 0, (total + count // 2) // count, -((-total + count // 2) // count))
        elif op.kind == "mean":
            y = _int8_mean(x, qin, qout)
        elif op.kind == "add":
            y = _int8_add(xs[0], xs[1], qg.qparams[op.inputs[0]], qg.qparams[op.inputs[1]], qout, op.activation)
        elif op.kind == "reshape":
            y = x.reshape(len(x), -1)
        elif op.kind == "pad":
            y = np.pad(x, ((0, 0), *op.pads, (0, 0)), constant_values=qin.zero_point)
        elif op.kind == "softmax":
            y = qout.quantize(float_op(op, [qin.dequantize(x)]))
        else:
            raise UnsupportedTFLiteLayerError(f"{op.source}: unknown op kind {op.kind!r}")
        values[op.output] = np.clip(y, -128, 127).astype(np.int8)
        for t in op.inputs:
            if last_use[t] == i and t != g.output:
                values[t] = None
    return values[g.output]


def _int8_mean(x: np.ndarray, qin: QParams, qout: QParams) -> np.ndarray:
    """TFLite's ``QuantizedMeanOrSum`` over H and W (reference/reduce.h): the offset sum times in/out scale,
    the multiplier divided by the element count in integers (so it rounds as TFLite Micro does)."""
    count = x.shape[1] * x.shape[2]
    total = (x.astype(np.int64) - qin.zero_point).sum(axis=(1, 2))
    m, s = quantize_multiplier(qin.scale / qout.scale)
    shift = min(int(count).bit_length() - 1, 32, 31 + int(s[0]))
    m = (m << shift) // count
    return multiply_by_quantized_multiplier(total, m, s - shift) + qout.zero_point


def _int8_add(a: np.ndarray, b: np.ndarray, qa: QParams, qb: QParams, qo: QParams, activation: str) -> np.ndarray:
    """TFLite's reference int8 ADD (left shift 20, inputs rescaled to twice the larger scale)."""
    left_shift = 20
    twice_max = 2 * max(qa.scale, qb.scale)
    ma, sa = quantize_multiplier(qa.scale / twice_max)
    mb, sb = quantize_multiplier(qb.scale / twice_max)
    mo, so = quantize_multiplier(twice_max / ((1 << left_shift) * qo.scale))
    va = multiply_by_quantized_multiplier((a.astype(np.int64) - qa.zero_point) << left_shift, ma, sa)
    vb = multiply_by_quantized_multiplier((b.astype(np.int64) - qb.zero_point) << left_shift, mb, sb)
    y = multiply_by_quantized_multiplier(va + vb, mo, so) + qo.zero_point
    lo, hi = _act_range(qo, activation)
    return np.clip(y, lo, hi)
