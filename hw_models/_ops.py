"""The op table: for each op kind, its shape rule and its cost terms.

A plain table from op kind to functions (PLiNIO style), independent of any search
method. Every function takes an `OpView` whose numbers may be Python ints or numpy
arrays (one entry per network of a batch). Unknown kinds raise
`UnsupportedLayerError`; nothing is ever costed as zero by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hw_models import _weights as W
from hw_models.errors import UnsupportedLayerError
from hw_models.ir import OpKind

Shape = tuple[Any, ...]

# TFLite stores per-channel quantisation as one float32 scale and one int64 zero point
# per channel (schema.fbs QuantizationParameters): 12 bytes.
QUANT_PARAM_BYTES_PER_CHANNEL = 12
# Gates per hidden unit of a recurrent cell: its matrices have G*H rows.
RNN_GATES = {OpKind.LSTM: 4, OpKind.GRU: 3}
# CMSIS-NN kernels keep int16 im2col columns and int32 pooling accumulators.
INT16_BYTES = 2
INT32_BYTES = 4


@dataclass
class OpView:
    """An op as the formulas see it (after batch-norm/activation folding)."""

    name: str
    kind: str
    attrs: dict[str, Any]
    in_shapes: list[Shape]
    in_bits: list[Any]
    out_shape: Shape
    out_bits: Any
    weights: dict[str, W.WeightView] = field(default_factory=dict)
    weight_shapes: dict[str, Shape] = field(default_factory=dict)
    bias: bool = False
    fused: list[str] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    output_name: str = ""


def numel(shape: Shape) -> Any:
    return math.prod(shape) if shape else 1


def _conv_out(size: Any, k: Any, s: Any, d: Any, padding: str) -> Any:
    # TFLite padding semantics: SAME -> ceil(size / s); VALID -> ceil((size - eff + 1) / s).
    eff = (np.asarray(k) - 1) * d + 1
    if padding == "same":
        return (size + s - 1) // s
    return (size - eff) // s + 1


# --- shape rules ------------------------------------------------------------------


def _shape_conv(v: OpView) -> Shape:
    h, w, _ = v.in_shapes[0]
    o, kh, kw, _ = v.weight_shapes["weight"]
    (sh, sw), (dh, dw) = v.attrs["stride"], v.attrs["dilation"]
    pad = v.attrs["padding"]
    return (_conv_out(h, kh, sh, dh, pad), _conv_out(w, kw, sw, dw, pad), o)


def _shape_pool(v: OpView) -> Shape:
    h, w, c = v.in_shapes[0]
    (kh, kw), (sh, sw) = v.attrs["kernel"], v.attrs["stride"]
    pad = v.attrs["padding"]
    return (_conv_out(h, kh, sh, 1, pad), _conv_out(w, kw, sw, 1, pad), c)


def _shape_linear(v: OpView) -> Shape:
    return (*v.in_shapes[0][:-1], v.weight_shapes["weight"][0])


def _shape_same(v: OpView) -> Shape:
    return v.in_shapes[0]


def _shape_gap(v: OpView) -> Shape:
    return (v.in_shapes[0][-1],)


def _shape_concat(v: OpView) -> Shape:
    first = v.in_shapes[0]
    axis = v.attrs["axis"] % len(first)
    total = sum(s[axis] for s in v.in_shapes)
    return (*first[:axis], total, *first[axis + 1 :])


def _shape_reshape(v: OpView) -> Shape:
    target = list(v.attrs["shape"])
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = numel(v.in_shapes[0]) // known
    return tuple(target)


def _shape_flatten(v: OpView) -> Shape:
    return (numel(v.in_shapes[0]),)


def _rnn_hidden(v: OpView) -> Any:
    return v.weight_shapes["w_hh"][1]


def _shape_rnn(v: OpView) -> Shape:
    t = v.in_shapes[0][0]
    h = _rnn_hidden(v)
    return (t, h) if v.attrs["return_sequences"] else (h,)


def _shape_embedding(v: OpView) -> Shape:
    return (*v.in_shapes[0], v.weight_shapes["weight"][1])


# --- MACs -------------------------------------------------------------------------


def _positions(v: OpView) -> Any:
    """How many times the weight matrix is applied (output pixels, or leading dims)."""
    if v.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D):
        return v.out_shape[0] * v.out_shape[1]
    return numel(v.in_shapes[0][:-1])


def _macs_matrix(v: OpView) -> Any:
    return _positions(v) * W.matvec_macs(v.weights["weight"])


# Element-wise products per step besides the gate matrices: LSTM f*c, i*g, o*tanh(c);
# GRU r*(W_hn h), (1 - z)*n, z*h (Hochreiter & Schmidhuber 1997; Cho et al. 2014).
_RNN_ELEMENTWISE_MACS_PER_HIDDEN = 3


def _macs_rnn(v: OpView) -> Any:
    t = v.in_shapes[0][0]
    h = _rnn_hidden(v)
    per_step = (
        W.matvec_macs(v.weights["w_ih"])
        + W.matvec_macs(v.weights["w_hh"])
        + _RNN_ELEMENTWISE_MACS_PER_HIDDEN * h
    )
    return t * per_step


def _zero(v: OpView) -> Any:
    return 0


def _outputs_rnn(v: OpView) -> Any:
    # Every step computes G*H gate pre-activations, each accumulated and requantised.
    return v.in_shapes[0][0] * RNN_GATES[v.kind] * _rnn_hidden(v)


# --- element work (ops without MACs, costed per element) ---------------------------


def _work_out(v: OpView) -> Any:
    return numel(v.out_shape)


def _work_pool(v: OpView) -> Any:
    kh, kw = v.attrs["kernel"]
    return numel(v.out_shape) * kh * kw


def _work_gap(v: OpView) -> Any:
    return numel(v.in_shapes[0])


# --- kernel scratch (CMSIS-NN buffer sizes; 0 for TFLM reference kernels) ----------
# Sizes from CMSIS-NN's *_get_buffer_size functions (arm_nnfunctions.h, v16): with the
# DSP extension, arm_convolve_s8 keeps two im2col columns of int16:
# 2 * C_in * KH * KW * 2 bytes, except the 1x1 fast path (stride 1, C_in % 4 == 0),
# which needs none; arm_depthwise_conv_s8_opt needs C * KH * KW * 2 bytes when the
# channel multiplier is 1; arm_avgpool_s8 needs C * 4 bytes. Without DSP (Cortex-M0+,
# reference kernels) none of them asks for scratch.


def _scratch_conv(v: OpView, dsp: bool) -> Any:
    if not dsp:
        return 0
    _, kh, kw, cg = v.weight_shapes["weight"]
    sh, sw = v.attrs["stride"]
    fast_1x1 = (np.asarray(kh) == 1) & (kw == 1) & (sh == 1) & (sw == 1) & (cg % 4 == 0)
    return np.where(fast_1x1, 0, 2 * cg * kh * kw * INT16_BYTES)


def _scratch_depthwise(v: OpView, dsp: bool) -> Any:
    if not dsp:
        return 0
    o, kh, kw, _ = v.weight_shapes["weight"]
    c = v.in_shapes[0][2]
    return np.where(np.asarray(o) == c, c * kh * kw * INT16_BYTES, 0)


def _scratch_avg_pool(v: OpView, dsp: bool) -> Any:
    return v.in_shapes[0][2] * INT32_BYTES if dsp else 0


def _scratch_gap(v: OpView, dsp: bool) -> Any:
    # TFLM's MEAN kernel (reduce_common.cc) requests one int32 accumulator per output.
    return numel(v.out_shape) * INT32_BYTES


def _scratch_lstm(v: OpView, dsp: bool) -> Any:
    # TFLM's integer LSTM keeps four int16 gate buffers of n_cell each (lstm_eval.h).
    return 4 * _rnn_hidden(v) * INT16_BYTES


def _scratch_gru(v: OpView, dsp: bool) -> Any:
    # Same layout as the LSTM kernel with three gates (estimate: TFLM has no GRU builtin).
    return 3 * _rnn_hidden(v) * INT16_BYTES


def _scratch_none(v: OpView, dsp: bool) -> Any:
    return 0


def structure_scratch_bytes(v: OpView) -> Any:
    """Intermediate buffers a compressed structure needs while its op runs.

    Low-rank: the rank-sized intermediate activation for every position (it is a
    separate tensor when the layer runs as two ops). Kronecker: the int32 (m2 x n1)
    product of the vec trick. HMD: one int32 dot product per rank-1 block.
    """

    def one(w: W.WeightView) -> Any:
        if w.kind == "low_rank":
            return _positions(v) * W.packed_bytes(w.fields["rank"], v.out_bits)
        if w.kind in ("kronecker", "hybrid_kronecker"):
            (_, n1), (m2, _) = w.fields["factors"]
            return m2 * n1 * INT32_BYTES
        if w.kind == "hmd":
            return w.fields["rank1_blocks"] * INT32_BYTES
        return 0

    total: Any = 0
    for w in v.weights.values():
        total = total + W.by_kind(w, one)
    return total


# --- bias and quantisation parameters ----------------------------------------------


def _bias_out(v: OpView) -> Any:
    return v.out_shape[-1] if v.bias else 0


def _bias_rnn(v: OpView) -> Any:
    if not v.bias:
        return 0
    h = _rnn_hidden(v)
    # LSTM: one fused bias per gate (4H). GRU: the candidate gate keeps b_in and b_hn
    # apart because r multiplies (W_hn h + b_hn) (Cho et al. 2014): 4H.
    return 4 * h


def _persistent_conv(v: OpView) -> Any:
    return v.weight_shapes["weight"][0]


@dataclass(frozen=True)
class OpRule:
    """The formulas of one op kind.

    Attributes:
        weights: names of the weights the op requires (exactly these).
        min_inputs / max_inputs: how many input tensors (max None = unbounded).
        shape: output shape from the inputs, attributes and weights.
        macs: multiply-accumulates of one inference.
        outputs: accumulator outputs of a MAC op (its per-output latency term).
        work: elements processed by an op without MACs (its latency term).
        scratch: kernel scratch bytes, given whether the core has the DSP extension.
        bias: number of bias values stored (int32 when quantised).
        out_channels: per-output-channel persistent data (conv, depthwise and fully connected
            output multipliers and shifts).
        structured: whether weights may use structures other than dense/sparse.
    """

    weights: tuple[str, ...]
    min_inputs: int
    max_inputs: int | None
    shape: Callable[[OpView], Shape]
    macs: Callable[[OpView], Any] = _zero
    outputs: Callable[[OpView], Any] = _zero
    work: Callable[[OpView], Any] = _zero
    scratch: Callable[[OpView, bool], Any] = _scratch_none
    bias: Callable[[OpView], Any] = _zero
    out_channels: Callable[[OpView], Any] = _zero
    structured: bool = False


RULES: dict[str, OpRule] = {
    OpKind.CONV2D: OpRule(
        ("weight",), 1, 1, _shape_conv, macs=_macs_matrix, outputs=_work_out, scratch=_scratch_conv,
        bias=_bias_out, out_channels=_persistent_conv,
        structured=True,
    ),
    OpKind.DEPTHWISE_CONV2D: OpRule(
        ("weight",), 1, 1, _shape_conv, macs=_macs_matrix, outputs=_work_out, scratch=_scratch_depthwise,
        bias=_bias_out, out_channels=_persistent_conv,
    ),
    OpKind.LINEAR: OpRule(
        ("weight",), 1, 1, _shape_linear, macs=_macs_matrix, outputs=_work_out, bias=_bias_out,
        out_channels=_persistent_conv, structured=True,
    ),
    OpKind.AVG_POOL2D: OpRule((), 1, 1, _shape_pool, work=_work_pool, scratch=_scratch_avg_pool),
    OpKind.MAX_POOL2D: OpRule((), 1, 1, _shape_pool, work=_work_pool),
    OpKind.GLOBAL_AVG_POOL: OpRule((), 1, 1, _shape_gap, work=_work_gap, scratch=_scratch_gap),
    OpKind.ADD: OpRule((), 2, None, _shape_same, work=_work_out),
    OpKind.CONCAT: OpRule((), 2, None, _shape_concat, work=_work_out),
    OpKind.RESHAPE: OpRule((), 1, 1, _shape_reshape, work=_work_out),
    OpKind.FLATTEN: OpRule((), 1, 1, _shape_flatten, work=_work_out),
    OpKind.SOFTMAX: OpRule((), 1, 1, _shape_same, work=_work_out),
    OpKind.RELU: OpRule((), 1, 1, _shape_same, work=_work_out),
    OpKind.RELU6: OpRule((), 1, 1, _shape_same, work=_work_out),
    OpKind.BATCH_NORM: OpRule((), 1, 1, _shape_same),
    OpKind.LSTM: OpRule(
        ("w_ih", "w_hh"), 1, 1, _shape_rnn, macs=_macs_rnn, outputs=_outputs_rnn, scratch=_scratch_lstm,
        bias=_bias_rnn, structured=True,
    ),
    OpKind.GRU: OpRule(
        ("w_ih", "w_hh"), 1, 1, _shape_rnn, macs=_macs_rnn, outputs=_outputs_rnn, scratch=_scratch_gru,
        bias=_bias_rnn, structured=True,
    ),
    OpKind.EMBEDDING: OpRule(("weight",), 1, 1, _shape_embedding, work=_work_out),
}

# Ops whose output activation may be fused, and that absorb a following batch norm.
FUSING_OPS = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.ADD})
BN_FOLDING_OPS = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR})


def rule(kind: str) -> OpRule:
    """The rule of `kind`, or UnsupportedLayerError listing the known kinds."""
    try:
        return RULES[kind]
    except KeyError:
        known = ", ".join(sorted(RULES))
        raise UnsupportedLayerError(
            f"op kind {kind!r} is not supported by the cost model; known kinds: {known}"
        ) from None
