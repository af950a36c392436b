"""The model file: what a TFLite flatbuffer stores for a network, entry by entry.

A runtime whose `stored_weights` is set keeps the network as a TFLite-style file
(schema.fbs): one `Tensor` table per activation, weight array, bias and constant tensor
(shape vector, name, quantisation table with a scale and a zero point per channel); one
`Buffer` per stored array, its data aligned to `buffer_alignment_bytes`; one `Operator`
per op with the indices of its input and output tensors; one `OperatorCode` per op kind;
and a fixed part (root table, subgraph, description). The per-entry constants are the
runtime profile's, calibrated against the files the `tflite` export writes
(bench/hw_model_fidelity.py).

Every function takes numbers that may be numpy arrays (one entry per network of a
batch), like the rest of the cost model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from hw_models import _weights as W
from hw_models._ops import QUANT_PARAM_BYTES_PER_CHANNEL, OpView
from hw_models.ir import OpKind
from hw_models.runtimes import RuntimeProfile

# int32 biases (TFLite int8 schema) and float32 biases are both 4 bytes.
BIAS_BYTES = 4
# int32 entries of the constant tensors some ops read.
_INDEX_BYTES = 4
# Ops whose weights (and biases) are quantised per output channel; the rest per array.
PER_CHANNEL_OPS = (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR)


def _aligned_padding(data_bytes: Any, alignment: int) -> Any:
    """Bytes that pad a buffer's data to the next multiple of `alignment`."""
    return (-np.asarray(data_bytes)) % alignment


def _tensor_entry(runtime: RuntimeProfile, rank: Any, quant_channels: Any) -> Any:
    """A Tensor table with its shape vector, plus its quantisation table when it has channels."""
    quantisation = np.where(
        np.asarray(quant_channels) > 0,
        runtime.quantization_bytes_per_tensor + np.asarray(quant_channels) * QUANT_PARAM_BYTES_PER_CHANNEL,
        0,
    )
    return runtime.metadata_bytes_per_tensor + rank * runtime.shape_bytes_per_dim + quantisation


def _stored_array(runtime: RuntimeProfile, data_bytes: Any, rank: Any, quant_channels: Any) -> Any:
    """A constant tensor: its entry, its buffer and the buffer's aligned data."""
    return (
        _tensor_entry(runtime, rank, quant_channels)
        + runtime.buffer_bytes_per_array
        + data_bytes
        + _aligned_padding(data_bytes, runtime.buffer_alignment_bytes)
    )


def activation_tensor_bytes(runtime: RuntimeProfile, rank: int, bits: Any = 8) -> Any:
    """An activation tensor's entry: shape with the batch dimension; one scale and zero point unless float."""
    if not runtime.stored_weights:
        return 0
    return _tensor_entry(runtime, rank + 1, np.where(np.asarray(bits) < 32, 1, 0))


def constant_inputs(v: OpView) -> list[int]:
    """Bytes of each constant non-weight tensor the op reads (TFLite's MEAN axes, RESHAPE shape)."""
    if v.kind == OpKind.GLOBAL_AVG_POOL:
        return [2 * _INDEX_BYTES]  # MEAN over height and width
    if v.kind in (OpKind.RESHAPE, OpKind.FLATTEN):
        return [(len(v.out_shape) + 1) * _INDEX_BYTES]
    return []


def op_file_bytes(v: OpView, runtime: RuntimeProfile, bias: Any) -> Any:
    """The op's share of the model file: its stored weights, bias and constants, output tensor and Operator.

    `bias` is the op's bias element count (0 without one).
    """
    total: Any = 0
    tensor_inputs: Any = len(v.in_shapes)
    has_bias = np.asarray(bias) > 0
    # The bias carries its weight's quantisation sets (its scale is input x weight scale);
    # with several weights (RNN gates), as many as the most finely quantised one.
    bias_sets: Any = 0
    for key, w in v.weights.items():
        arrays = W.stored_arrays(w)
        quantised = np.asarray(w.bits) < 32
        sets = arrays
        if v.kind in PER_CHANNEL_OPS:
            # Dense and sparse matrices are quantised per output channel; factorised
            # structures per stored array.
            sets = np.where(W.is_kind(w, ("dense", "sparse")), v.weight_shapes[key][0], arrays)
        sets = np.where(quantised, sets, 0)
        rank = np.where(arrays == 1, len(v.weight_shapes[key]), 2)
        # One tensor per stored array; the quantisation sets spread over them.
        total = total + arrays * _stored_array(runtime, 0, rank, 0) + W.storage_bytes(w)
        total = total + _aligned_padding(W.storage_bytes(w), runtime.buffer_alignment_bytes)
        total = total + np.where(sets > 0, arrays * runtime.quantization_bytes_per_tensor, 0)
        total = total + sets * QUANT_PARAM_BYTES_PER_CHANNEL
        tensor_inputs = tensor_inputs + arrays
        bias_sets = np.maximum(bias_sets, sets)
    total = total + np.where(has_bias, _stored_array(runtime, np.asarray(bias) * BIAS_BYTES, 1, bias_sets), 0)
    tensor_inputs = tensor_inputs + has_bias
    for data_bytes in constant_inputs(v):
        total = total + _stored_array(runtime, data_bytes, 1, 0)
        tensor_inputs = tensor_inputs + 1
    output = activation_tensor_bytes(runtime, len(v.out_shape), v.out_bits)
    operator = runtime.metadata_bytes_per_op + (tensor_inputs + 1) * runtime.tensor_index_bytes
    return total + output + operator


def graph_fixed_bytes(graph: Any, runtime: RuntimeProfile) -> int:
    """`model_file_fixed_bytes` of a compiled graph (`NetworkBatch.graph`): its inputs are the tensors no op writes."""
    produced = {v.output_name for v in graph.ops}
    tensors = zip(graph.tensor_names, graph.tensor_shapes, graph.tensor_bits, strict=True)
    inputs = [(len(shape), bits) for name, shape, bits in tensors if name not in produced]
    return model_file_fixed_bytes(runtime, inputs, {v.kind for v in graph.ops})


def model_file_fixed_bytes(runtime: RuntimeProfile, inputs: Iterable[tuple[int, Any]], kinds: Iterable[str]) -> Any:
    """The file's parts that belong to no op: header, the inputs' entries (rank, bits), one OperatorCode per kind."""
    if not runtime.stored_weights:
        return 0
    entries = sum(activation_tensor_bytes(runtime, rank, bits) for rank, bits in inputs)
    return runtime.model_header_bytes + entries + len(set(kinds)) * runtime.metadata_bytes_per_op_kind
