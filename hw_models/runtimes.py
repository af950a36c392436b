"""Runtime profiles: what the deployment runtime adds to a network's bare cost.

`tflm` models TensorFlow Lite Micro with CMSIS-NN kernels: the arena planned by its
GreedyMemoryPlanner, kernel scratch, the persistent tail, the flatbuffer's metadata and
the code of the kernels linked in. `ideal` is the papers' accounting (SpArSe, uNAS):
SRAM = working memory, model = non-zeros at their bits, no runtime at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hw_models.errors import HardwareModelError
from hw_models.ir import FrozenMap


class UnknownRuntimeError(HardwareModelError, KeyError):
    """A runtime name that is not defined."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class RuntimeProfile:
    """Constants of one runtime. All sizes in bytes.

    Attributes:
        plan_arena: plan tensors with the greedy planner (else SRAM = working memory).
        count_scratch: kernel and structure scratch buffers take arena space.
        tensor_alignment_bytes: arena buffer alignment.
        persistent_bytes_per_tensor / _per_op / _per_op_kind / _per_io_tensor,
            persistent_fixed_bytes: the persistent tail the interpreter allocates besides
            the planned arena (hw_models.persistent); conv, depthwise and fully
            connected kernels add two int32 arrays per output channel on top.
        include_sram_overhead: add the device's firmware SRAM overhead.
        stored_weights: model bytes are the stored structure (with sparse indices,
            biases, quantisation parameters and metadata); else non-zeros at their bits.
        model_header_bytes / metadata_bytes_per_tensor / metadata_bytes_per_op /
            metadata_bytes_per_op_kind: the model file's fixed part and its Tensor,
            Operator and OperatorCode entries (hw_models.model_file).
        shape_bytes_per_dim / quantization_bytes_per_tensor / buffer_bytes_per_array /
            tensor_index_bytes: a tensor's shape entries, its quantisation table (the
            per-channel scale and zero point come on top), a stored array's Buffer, and
            one input or output index of an Operator.
        buffer_alignment_bytes: stored arrays' data is aligned to this in the file.
        code_base_bytes / code_bytes_per_op_kind: runtime code in flash.
    """

    name: str
    plan_arena: bool
    count_scratch: bool
    tensor_alignment_bytes: int
    persistent_bytes_per_tensor: int
    persistent_bytes_per_op: int
    persistent_bytes_per_io_tensor: int
    persistent_fixed_bytes: int
    include_sram_overhead: bool
    stored_weights: bool
    model_header_bytes: int
    metadata_bytes_per_tensor: int
    metadata_bytes_per_op: int
    metadata_bytes_per_op_kind: int
    shape_bytes_per_dim: int
    quantization_bytes_per_tensor: int
    buffer_bytes_per_array: int
    buffer_alignment_bytes: int
    tensor_index_bytes: int
    code_base_bytes: int
    code_bytes_per_op_kind: Mapping[str, int] = field(default_factory=FrozenMap)
    persistent_bytes_per_op_kind: Mapping[str, int] = field(default_factory=FrozenMap)
    sources: Mapping[str, str] = field(default_factory=FrozenMap)


TFLM = RuntimeProfile(
    name="tflm",
    plan_arena=True,
    count_scratch=True,
    tensor_alignment_bytes=16,
    persistent_bytes_per_tensor=12,
    persistent_bytes_per_op=32,
    persistent_bytes_per_io_tensor=76,
    persistent_fixed_bytes=132,
    include_sram_overhead=True,
    stored_weights=True,
    model_header_bytes=172,
    metadata_bytes_per_tensor=22,
    metadata_bytes_per_op=44,
    metadata_bytes_per_op_kind=40,
    shape_bytes_per_dim=4,
    quantization_bytes_per_tensor=24,
    buffer_bytes_per_array=65,
    buffer_alignment_bytes=16,
    tensor_index_bytes=4,
    code_base_bytes=24 * 1024,
    code_bytes_per_op_kind=FrozenMap({
        "conv2d": 6144, "depthwise_conv2d": 6144, "linear": 2048, "avg_pool2d": 1536,
        "max_pool2d": 1536, "global_avg_pool": 2048, "add": 2048, "concat": 1024,
        "reshape": 512, "flatten": 512, "softmax": 2048, "relu": 768, "relu6": 768,
        "lstm": 12288, "gru": 10240, "embedding": 768,
    }),
    persistent_bytes_per_op_kind=FrozenMap({
        "conv2d": 92, "depthwise_conv2d": 92, "linear": 72, "avg_pool2d": 72, "max_pool2d": 72,
        "global_avg_pool": 56, "add": 72, "softmax": 68, "reshape": 36, "flatten": 36,
        "concat": 72, "relu": 16, "relu6": 16, "lstm": 256, "gru": 192, "embedding": 16,
    }),
    sources=FrozenMap({
        "tensor_alignment_bytes": "TFLM MicroArenaBufferAlignment() = 16 (micro_arena_constants.h); "
        "the planner is given sizes rounded up to it",
        "persistent_bytes_per_tensor": "TfLiteEvalTensor (tensorflow/lite/micro/c/common.h: data and "
        "dims pointers, type enum) on ILP32, one per tensor of the model; 24 B on LP64, which the "
        "tflite-micro interpreter records (bench/hw_model_fidelity.py)",
        "persistent_bytes_per_op": "NodeAndRegistration (micro_allocator.h): TfLiteNode, 6 pointers and "
        "an int, plus the registration pointer, on ILP32; 64 B recorded on LP64",
        "persistent_bytes_per_io_tensor": "per model input/output: TfLiteTensor of the static-memory "
        "build (40 B on ILP32), TfLiteAffineQuantization (12) with a 1-entry zero-point array (8), "
        "and the interpreter's pointer array (16 after alignment); 112 B on LP64, recorded",
        "persistent_fixed_bytes": "SingleArenaBufferAllocator (36), GreedyMemoryPlanner (44), "
        "MicroAllocator (36), MicroBuiltinDataAllocator and SubgraphAllocations (16) on ILP32, from "
        "their fields; the host's recording allocators are 488 B on LP64",
        "persistent_bytes_per_op_kind": "the kernel's OpData (kernels/conv.h, fully_connected.h, "
        "pooling.h, add.h, reduce.h, softmax.h; a persistent buffer rounded up to 16 B) plus the "
        "parser's builtin_data (builtin_op_data.h), ILP32 with 4-byte enums: conv and depthwise "
        "64 + 28, fully connected 48 + 24, pools 32 + 40, add 64 + 8, MEAN 48 + 4 + a scratch "
        "handle (4), softmax 64 + 4, reshape 36; concat, relu, lstm, gru and embedding are "
        "estimates. The same layouts on LP64 (runtimes.TFLM_HOST_64) reproduce the interpreter's "
        "recorded tail within a few percent (bench/hw_model_fidelity.py)",
        "model_header_bytes": "fitted with metadata_bytes_per_tensor, buffer_bytes_per_array and "
        "metadata_bytes_per_op_kind to the .tflite files of 60 exported architectures "
        "(bench/calibrate_model_file.py); every entry count matches the files exactly",
        "metadata_bytes_per_tensor": "fitted (see model_header_bytes): Tensor table, name (the export's "
        "names) and its offset; the shape vector is counted apart, 4 B per entry",
        "buffer_bytes_per_array": "fitted (see model_header_bytes): Buffer table, its vector's length "
        "prefix, the weight names' longer strings; data alignment is counted apart",
        "metadata_bytes_per_op_kind": "fitted (see model_header_bytes): one OperatorCode table per op kind",
        "quantization_bytes_per_tensor": "measured: a 1-channel activation costs 36 B more with "
        "quantisation than without, 12 of them the scale and zero point "
        "(tests/export_tests/test_hw_model_fidelity.py)",
        "metadata_bytes_per_op": "measured: an Operator with Conv2DOptions and 4 tensor indices costs "
        "about 60 B, 16 of them the indices (tests/export_tests/test_hw_model_fidelity.py)",
        "shape_bytes_per_dim": "schema.fbs: Tensor.shape is a vector of int32",
        "tensor_index_bytes": "schema.fbs: Operator.inputs/outputs are vectors of int32",
        "buffer_alignment_bytes": "the tflite export aligns buffers to 16 B for TFLM's kernels",
        "code_base_bytes": "estimate of TFLM interpreter, allocator, flatbuffer reader and error "
        "reporter built with arm-none-eabi-gcc -Os (the TFLM paper, arXiv 2010.08678, reports a "
        "core interpreter of a few kB; allocator and schema code add to it); measured in issue 11",
        "code_bytes_per_op_kind": "estimates of each CMSIS-NN/TFLM kernel's code, -Os; measured in issue 11",
    }),
)

TFLM_HOST_64 = replace(
    TFLM,
    name="tflm-host-64",
    persistent_bytes_per_tensor=24,
    persistent_bytes_per_op=64,
    persistent_bytes_per_io_tensor=112,
    persistent_fixed_bytes=488,
    persistent_bytes_per_op_kind=FrozenMap({
        **TFLM.persistent_bytes_per_op_kind,
        "conv2d": 108, "depthwise_conv2d": 108, "linear": 112, "global_avg_pool": 60, "softmax": 84,
    }),
)
"""TFLM built for a 64-bit host, as the tflite-micro Python interpreter runs it (LP64 layouts, recording allocator).

Not a deployment target: it is what bench/hw_model_fidelity.py and the tests compare
with the interpreter's allocation record, to check the tail's structure that the
32-bit `tflm` profile shares. Pools, add and reshape hold no pointers (same sizes).
"""

IDEAL = RuntimeProfile(
    name="ideal",
    plan_arena=False,
    count_scratch=False,
    tensor_alignment_bytes=1,
    persistent_bytes_per_tensor=0,
    persistent_bytes_per_op=0,
    persistent_bytes_per_io_tensor=0,
    persistent_fixed_bytes=0,
    include_sram_overhead=False,
    stored_weights=False,
    model_header_bytes=0,
    metadata_bytes_per_tensor=0,
    metadata_bytes_per_op=0,
    metadata_bytes_per_op_kind=0,
    shape_bytes_per_dim=0,
    quantization_bytes_per_tensor=0,
    buffer_bytes_per_array=0,
    buffer_alignment_bytes=1,
    tensor_index_bytes=0,
    code_base_bytes=0,
    sources=FrozenMap({
        "plan_arena": "SpArSe (arXiv 1905.12107) Sec. 3: working memory = max over ops of inputs + outputs",
        "stored_weights": "SpArSe: model size = number of non-zero weights (one byte each at 8 bits)",
    }),
)

RUNTIMES: dict[str, RuntimeProfile] = {TFLM.name: TFLM, IDEAL.name: IDEAL}


def get_runtime(runtime: str | RuntimeProfile) -> RuntimeProfile:
    """A runtime profile by name (`tflm` or `ideal`), or the profile itself."""
    if isinstance(runtime, RuntimeProfile):
        return runtime
    try:
        return RUNTIMES[runtime]
    except KeyError:
        raise UnknownRuntimeError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}") from None
