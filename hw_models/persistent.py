"""The runtime's persistent tail: what TFLite Micro allocates besides the planned arena.

From TFLM's source (tensorflow/tflite-micro; the structs' fields are listed with the
runtime profile's sources), the tail holds:

- one `TfLiteEvalTensor` per tensor of the model: activations, weight arrays, biases and
  constant inputs (`persistent_bytes_per_tensor`);
- one `NodeAndRegistration` per op (`persistent_bytes_per_op`);
- per op kind, the kernel's `OpData` (a persistent buffer, rounded up to the arena
  alignment) and the `builtin_data` the flatbuffer parser allocates
  (`persistent_bytes_per_op_kind`);
- for conv, depthwise and fully connected kernels, two int32 arrays (output multiplier
  and shift) of one entry per output channel, each rounded up to the arena alignment;
- per model input and output a full `TfLiteTensor` with its quantisation and the
  interpreter's input/output pointer arrays (`persistent_bytes_per_io_tensor`);
- the allocator's and planner's own objects (`persistent_fixed_bytes`).

Most of these hold pointers, so the sizes depend on the target's word size; the `tflm`
profile is for 32-bit Cortex-M and `runtimes.TFLM_HOST_64` is the same runtime built
for a 64-bit host, which is where the tflite-micro Python interpreter measures it
(bench/hw_model_fidelity.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hw_models._ops import OpView
from hw_models.model_file import constant_inputs
from hw_models.runtimes import RuntimeProfile

# Output multiplier and output shift: int32 each.
_CHANNEL_ARRAYS = 2
_INT32_BYTES = 4


def _aligned(size: Any, alignment: int) -> Any:
    return (np.asarray(size) + alignment - 1) // alignment * alignment


def op_persistent_bytes(v: OpView, runtime: RuntimeProfile, out_channels: Any, stored_tensors: Any) -> Any:
    """The op's tail: node, kernel data, per-channel arrays, and the eval tensors of its output and stored arrays.

    Args:
        v: The op.
        runtime: The runtime profile.
        out_channels: Output channels with per-channel requantisation (0 for other ops).
        stored_tensors: Weight arrays and bias tensors the op reads from the model.
    """
    channels = np.asarray(out_channels)
    arrays = np.where(
        channels > 0, _CHANNEL_ARRAYS * _aligned(channels * _INT32_BYTES, runtime.tensor_alignment_bytes), 0
    )
    tensors = stored_tensors + len(constant_inputs(v)) + 1  # + the output
    return (
        runtime.persistent_bytes_per_op
        + runtime.persistent_bytes_per_op_kind.get(v.kind, 0)
        + arrays
        + tensors * runtime.persistent_bytes_per_tensor
    )


def model_persistent_fixed_bytes(runtime: RuntimeProfile, n_inputs: int, n_outputs: int) -> int:
    """The tail's parts that belong to no op: allocator objects, the model's inputs and outputs."""
    io = (n_inputs + n_outputs) * runtime.persistent_bytes_per_io_tensor
    return runtime.persistent_fixed_bytes + io + n_inputs * runtime.persistent_bytes_per_tensor


def graph_persistent_fixed_bytes(graph: Any, runtime: RuntimeProfile) -> int:
    """`model_persistent_fixed_bytes` of a compiled graph: inputs no op writes, outputs no op reads."""
    produced = {v.output_name for v in graph.ops}
    consumed = {name for v in graph.ops for name in v.input_names}
    n_inputs = sum(name not in produced for name in graph.tensor_names)
    n_outputs = sum(name not in consumed for name in graph.tensor_names)
    return model_persistent_fixed_bytes(runtime, n_inputs, n_outputs)
