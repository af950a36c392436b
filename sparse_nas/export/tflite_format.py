"""The ``tflite`` format: an int8 TFLite flatbuffer for TensorFlow Lite Micro, plus a C array.

The model is written directly from the quantised lowered graph
(:mod:`~sparse_nas.export.tflite_graph`, :mod:`~sparse_nas.export.tflite_quant`) with
the ``tflite`` schema package and ``flatbuffers``; TensorFlow is not needed. Inputs and
outputs are int8 (full-integer model, NHWC); the manifest gives their scale and zero
point. Compressed layers (pruned, low-rank, Kronecker, hybrid Kronecker, HMD) have no
TFLite Micro kernel, so they are stored as their dense equivalents; the manifest lists
each with what the expansion costs.

The check runs the written file in the tflite-micro Python interpreter (reference
kernels): its outputs are compared with :func:`~sparse_nas.export.tflite_quant.int8_forward`
and its test accuracy with the PyTorch model's. The interpreter's allocation record
(``RecordingMicroAllocator``) is captured and stored as ``arena``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparse_nas.export.formats import BaseExportFormat, FormatReport, register_format
from sparse_nas.export.tflite_graph import LoweredGraph, UnsupportedTFLiteLayerError, lower_model, prepare_inputs
from sparse_nas.export.tflite_quant import QuantizedGraph, int8_forward, quantize_graph

if TYPE_CHECKING:
    from torch import nn

    from hw_models import NetworkSpec
    from sparse_nas.datasets import DatasetSplits, TensorSplit
    from sparse_nas.export.trial import TrainedTrial

MODEL_FILE = "model.tflite"
C_SOURCE_FILE, C_HEADER_FILE = "model_data.cc", "model_data.h"
C_ARRAY_NAME = "g_model_data"
SCHEMA_VERSION = 3
BUFFER_ALIGNMENT = 16
"""TFLM reads weights in place; 16-byte aligned buffers suit every kernel (MicroArenaBufferAlignment)."""
INTERPRETER_ARENA_BYTES = (8 << 20, 64 << 20, 512 << 20)
"""Arenas offered to the interpreter for checks, smallest first (the record says how much was used)."""

_OPCODES = {
    "conv2d": "CONV_2D",
    "depthwise_conv2d": "DEPTHWISE_CONV_2D",
    "fully_connected": "FULLY_CONNECTED",
    "avg_pool2d": "AVERAGE_POOL_2D",
    "max_pool2d": "MAX_POOL_2D",
    "mean": "MEAN",
    "add": "ADD",
    "reshape": "RESHAPE",
    "softmax": "SOFTMAX",
    "pad": "PAD",
}


def _schema(table: str) -> Any:
    """The ``tflite`` package's module for a schema table (the package re-exports the classes under the same names)."""
    import importlib

    return importlib.import_module(f"tflite.{table}")


def _activation_code(activation: str) -> int:
    from tflite.ActivationFunctionType import ActivationFunctionType as A

    return {"none": A.NONE, "relu": A.RELU, "relu6": A.RELU6}[activation]


class _Writer:
    """Builds one TFLite model (one subgraph) with the ``tflite`` package's builder functions."""

    def __init__(self) -> None:
        import flatbuffers

        self.b = flatbuffers.Builder(1024)
        self.buffers: list[bytes] = [b""]  # buffer 0 is the empty sentinel
        self.tensors: list[int] = []
        self.operators: list[int] = []
        self.opcodes: list[int] = []

    def _ints(self, start: Any, values: list[int], prepend: str = "PrependInt32") -> int:
        start(self.b, len(values))
        for v in reversed(values):
            getattr(self.b, prepend)(int(v))
        return self.b.EndVector()

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        *,
        scales: np.ndarray | None = None,
        zero_points: np.ndarray | None = None,
        quantized_dimension: int = 0,
        data: bytes | None = None,
    ) -> int:
        Q = _schema("QuantizationParameters")
        T = _schema("Tensor")
        from tflite.TensorType import TensorType

        b = self.b
        buffer = 0
        if data is not None:
            self.buffers.append(data)
            buffer = len(self.buffers) - 1
        quant = None
        if scales is not None:
            scale_vec = b.CreateNumpyVector(np.asarray(scales, dtype=np.float32))
            zp_vec = b.CreateNumpyVector(np.asarray(zero_points, dtype=np.int64))
            Q.QuantizationParametersStart(b)
            Q.QuantizationParametersAddScale(b, scale_vec)
            Q.QuantizationParametersAddZeroPoint(b, zp_vec)
            Q.QuantizationParametersAddQuantizedDimension(b, quantized_dimension)
            quant = Q.QuantizationParametersEnd(b)
        name_off = b.CreateString(name)
        shape_vec = b.CreateNumpyVector(np.asarray(shape, dtype=np.int32))
        T.TensorStart(b)
        T.TensorAddShape(b, shape_vec)
        T.TensorAddType(b, {"int8": TensorType.INT8, "int32": TensorType.INT32}[dtype])
        T.TensorAddBuffer(b, buffer)
        T.TensorAddName(b, name_off)
        if quant is not None:
            T.TensorAddQuantization(b, quant)
        self.tensors.append(T.TensorEnd(b))
        return len(self.tensors) - 1

    def operator(self, opcode: int, inputs: list[int], outputs: list[int], options: tuple[int, int] | None) -> None:
        Op = _schema("Operator")

        b = self.b
        in_vec = self._ints(Op.OperatorStartInputsVector, inputs)
        out_vec = self._ints(Op.OperatorStartOutputsVector, outputs)
        Op.OperatorStart(b)
        Op.OperatorAddOpcodeIndex(b, opcode)
        Op.OperatorAddInputs(b, in_vec)
        Op.OperatorAddOutputs(b, out_vec)
        if options is not None:
            Op.OperatorAddBuiltinOptionsType(b, options[0])
            Op.OperatorAddBuiltinOptions(b, options[1])
        self.operators.append(Op.OperatorEnd(b))

    def finish(self, builtin_codes: list[int], inputs: list[int], outputs: list[int], description: str) -> bytes:
        Bu = _schema("Buffer")
        M = _schema("Model")
        OC = _schema("OperatorCode")
        S = _schema("SubGraph")

        b = self.b
        codes = []
        for code in builtin_codes:
            OC.OperatorCodeStart(b)
            OC.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            OC.OperatorCodeAddBuiltinCode(b, code)
            OC.OperatorCodeAddVersion(b, 1)
            codes.append(OC.OperatorCodeEnd(b))
        buffers = []
        for data in self.buffers:
            vec = None
            if data:
                b.StartVector(1, len(data), BUFFER_ALIGNMENT)
                b.head -= len(data)
                b.Bytes[b.head : b.head + len(data)] = data
                vec = b.EndVector()
            Bu.BufferStart(b)
            if vec is not None:
                Bu.BufferAddData(b, vec)
            buffers.append(Bu.BufferEnd(b))

        def offsets(start: Any, items: list[int]) -> int:
            start(b, len(items))
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            return b.EndVector()

        tensors = offsets(S.SubGraphStartTensorsVector, self.tensors)
        ops = offsets(S.SubGraphStartOperatorsVector, self.operators)
        in_vec = self._ints(S.SubGraphStartInputsVector, inputs)
        out_vec = self._ints(S.SubGraphStartOutputsVector, outputs)
        name = b.CreateString("main")
        S.SubGraphStart(b)
        S.SubGraphAddTensors(b, tensors)
        S.SubGraphAddInputs(b, in_vec)
        S.SubGraphAddOutputs(b, out_vec)
        S.SubGraphAddOperators(b, ops)
        S.SubGraphAddName(b, name)
        subgraph = S.SubGraphEnd(b)
        codes_vec = offsets(M.ModelStartOperatorCodesVector, codes)
        subgraphs = offsets(M.ModelStartSubgraphsVector, [subgraph])
        buffers_vec = offsets(M.ModelStartBuffersVector, buffers)
        desc = b.CreateString(description)
        M.ModelStart(b)
        M.ModelAddVersion(b, SCHEMA_VERSION)
        M.ModelAddOperatorCodes(b, codes_vec)
        M.ModelAddSubgraphs(b, subgraphs)
        M.ModelAddDescription(b, desc)
        M.ModelAddBuffers(b, buffers_vec)
        b.Finish(M.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _options(w: _Writer, op: Any, depth_in: int) -> tuple[int, int] | None:
    """(BuiltinOptions type, offset) of an op's options table."""
    AddO = _schema("AddOptions")
    ConvO = _schema("Conv2DOptions")
    DwO = _schema("DepthwiseConv2DOptions")
    FcO = _schema("FullyConnectedOptions")
    PadO = _schema("PadOptions")
    PoolO = _schema("Pool2DOptions")
    RedO = _schema("ReducerOptions")
    ResO = _schema("ReshapeOptions")
    SmO = _schema("SoftmaxOptions")
    from tflite.BuiltinOptions import BuiltinOptions as BO
    from tflite.Padding import Padding

    b = w.b
    padding = Padding.SAME if op.padding == "SAME" else Padding.VALID
    act = _activation_code(op.activation)
    if op.kind == "conv2d":
        ConvO.Conv2DOptionsStart(b)
        ConvO.Conv2DOptionsAddPadding(b, padding)
        ConvO.Conv2DOptionsAddStrideH(b, op.stride[0])
        ConvO.Conv2DOptionsAddStrideW(b, op.stride[1])
        ConvO.Conv2DOptionsAddDilationHFactor(b, 1)
        ConvO.Conv2DOptionsAddDilationWFactor(b, 1)
        ConvO.Conv2DOptionsAddFusedActivationFunction(b, act)
        return BO.Conv2DOptions, ConvO.Conv2DOptionsEnd(b)
    if op.kind == "depthwise_conv2d":
        DwO.DepthwiseConv2DOptionsStart(b)
        DwO.DepthwiseConv2DOptionsAddPadding(b, padding)
        DwO.DepthwiseConv2DOptionsAddStrideH(b, op.stride[0])
        DwO.DepthwiseConv2DOptionsAddStrideW(b, op.stride[1])
        DwO.DepthwiseConv2DOptionsAddDepthMultiplier(b, op.weight.shape[3] // depth_in)
        DwO.DepthwiseConv2DOptionsAddDilationHFactor(b, 1)
        DwO.DepthwiseConv2DOptionsAddDilationWFactor(b, 1)
        DwO.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
        return BO.DepthwiseConv2DOptions, DwO.DepthwiseConv2DOptionsEnd(b)
    if op.kind == "fully_connected":
        FcO.FullyConnectedOptionsStart(b)
        FcO.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        return BO.FullyConnectedOptions, FcO.FullyConnectedOptionsEnd(b)
    if op.kind in ("avg_pool2d", "max_pool2d"):
        PoolO.Pool2DOptionsStart(b)
        PoolO.Pool2DOptionsAddPadding(b, Padding.VALID)
        PoolO.Pool2DOptionsAddStrideH(b, op.stride[0])
        PoolO.Pool2DOptionsAddStrideW(b, op.stride[1])
        PoolO.Pool2DOptionsAddFilterHeight(b, op.kernel[0])
        PoolO.Pool2DOptionsAddFilterWidth(b, op.kernel[1])
        PoolO.Pool2DOptionsAddFusedActivationFunction(b, act)
        return BO.Pool2DOptions, PoolO.Pool2DOptionsEnd(b)
    if op.kind == "mean":
        RedO.ReducerOptionsStart(b)
        RedO.ReducerOptionsAddKeepDims(b, False)
        return BO.ReducerOptions, RedO.ReducerOptionsEnd(b)
    if op.kind == "add":
        AddO.AddOptionsStart(b)
        AddO.AddOptionsAddFusedActivationFunction(b, act)
        return BO.AddOptions, AddO.AddOptionsEnd(b)
    if op.kind == "reshape":
        ResO.ReshapeOptionsStart(b)
        return BO.ReshapeOptions, ResO.ReshapeOptionsEnd(b)
    if op.kind == "softmax":
        SmO.SoftmaxOptionsStart(b)
        SmO.SoftmaxOptionsAddBeta(b, 1.0)
        return BO.SoftmaxOptions, SmO.SoftmaxOptionsEnd(b)
    if op.kind == "pad":
        PadO.PadOptionsStart(b)
        return BO.PadOptions, PadO.PadOptionsEnd(b)
    raise UnsupportedTFLiteLayerError(f"{op.source}: unknown op kind {op.kind!r}")


def write_tflite(qg: QuantizedGraph, description: str = "sparse-nas") -> bytes:
    """The int8 TFLite flatbuffer of a quantised graph (batch 1, NHWC)."""
    from tflite.BuiltinOperator import BuiltinOperator

    g: LoweredGraph = qg.graph
    w = _Writer()

    def act_tensor(t: int, name: str) -> int:
        q = qg.qparams[t]
        return w.tensor(name, (1, *g.shapes[t]), "int8", scales=[q.scale], zero_points=[q.zero_point])

    tensor_ids = {g.input: act_tensor(g.input, "input")}
    codes: list[int] = []
    for i, op in enumerate(g.ops):
        inputs = [tensor_ids[t] for t in op.inputs]
        if op.weight is not None:
            channel_axis = 3 if op.kind == "depthwise_conv2d" else 0
            scales = qg.weight_scales[i]
            inputs.append(
                w.tensor(
                    f"{op.source}.weight",
                    qg.weights_q[i].shape,
                    "int8",
                    scales=scales,
                    zero_points=np.zeros(len(scales), np.int64),
                    quantized_dimension=channel_axis,
                    data=qg.weights_q[i].tobytes(),
                )
            )
            bias_scales = qg.qparams[op.inputs[0]].scale * scales
            inputs.append(
                w.tensor(
                    f"{op.source}.bias",
                    (len(scales),),
                    "int32",
                    scales=bias_scales,
                    zero_points=np.zeros(len(scales), np.int64),
                    data=qg.biases_q[i].tobytes(),
                )
            )
        elif op.kind == "mean":
            inputs.append(w.tensor(f"{op.source}.axis", (2,), "int32", data=np.array([1, 2], np.int32).tobytes()))
        elif op.kind == "reshape":
            shape = np.array([1, *g.shapes[op.output]], np.int32)
            inputs.append(w.tensor(f"{op.source}.shape", (len(shape),), "int32", data=shape.tobytes()))
        elif op.kind == "pad":
            pads = np.array([[0, 0], *op.pads, [0, 0]], np.int32)
            inputs.append(w.tensor(f"{op.source}.paddings", (4, 2), "int32", data=pads.tobytes()))
        name = "output" if op.output == g.output else op.source
        tensor_ids[op.output] = act_tensor(op.output, name)
        code = getattr(BuiltinOperator, _OPCODES[op.kind])
        if code not in codes:
            codes.append(code)
        w.operator(codes.index(code), inputs, [tensor_ids[op.output]], _options(w, op, g.shapes[op.inputs[0]][-1]))
    return w.finish(codes, [tensor_ids[g.input]], [tensor_ids[g.output]], description)


def c_array_files(model: bytes, name: str = C_ARRAY_NAME) -> tuple[str, str]:
    """``(model_data.cc, model_data.h)`` holding ``model`` as a 16-byte aligned ``unsigned char`` array."""
    guard = "SPARSE_NAS_MODEL_DATA_H_"
    header = (
        f"// int8 TFLite model written by sparse-nas ({len(model)} bytes).\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n#endif  // {guard}\n"
    )
    rows = [", ".join(f"0x{byte:02x}" for byte in model[i : i + 12]) for i in range(0, len(model), 12)]
    body = ",\n  ".join(rows)
    source = (
        f'#include "{C_HEADER_FILE}"\n\n'
        "// TFLite Micro reads the model in place: keep it aligned for its buffers.\n"
        f"alignas({BUFFER_ALIGNMENT}) const unsigned char {name}[] = {{\n  {body}\n}};\n"
        f"const unsigned int {name}_len = {len(model)};\n"
    )
    return source, header


# --- the tflite-micro interpreter ---------------------------------------------------------


def _interpreter(model: bytes) -> Any:
    """A tflite-micro interpreter on ``model``, with the smallest of the offered arenas that fits it."""
    from tflite_micro.python.tflite_micro import runtime

    for arena_bytes in INTERPRETER_ARENA_BYTES[:-1]:
        try:
            return runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
        except RuntimeError:  # "TFLM failed to allocate tensors": try a larger arena
            continue
    return runtime.Interpreter.from_bytes(model, arena_size=INTERPRETER_ARENA_BYTES[-1])


def tflm_outputs(model: bytes, x_q: np.ndarray) -> np.ndarray:
    """int8 outputs of the model in the tflite-micro interpreter, one invoke per sample of ``x_q`` (NHWC)."""
    interpreter = _interpreter(model)
    outputs = []
    for sample in x_q:
        interpreter.set_input(sample[None].astype(np.int8), 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)).reshape(-1))
    return np.stack(outputs)


_RECORD = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")


def tflm_arena(model: bytes) -> dict[str, Any]:
    """The interpreter's allocation record after one invoke: arena ``total_bytes``, ``head_bytes``, ``tail_bytes``.

    ``RecordingMicroAllocator`` prints the record to stderr from C++, so file descriptor 2
    is redirected to a temporary file while it prints.
    """
    interpreter = _interpreter(model)
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
    interpreter.invoke()
    with tempfile.TemporaryFile(mode="w+b") as captured:
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        record = captured.read().decode(errors="replace")
    values = {kind: int(n) for kind, n in _RECORD.findall(record)}
    if set(values) != {"total", "head", "tail"}:
        raise RuntimeError(f"tflite-micro printed no allocation record: {record[:500]!r}")
    return {
        "total_bytes": values["total"],
        "head_bytes": values["head"],
        "tail_bytes": values["tail"],
        "record": [line.strip() for line in record.splitlines() if line.strip()],
    }


def tflm_version() -> str:
    from tflite_micro.python.tflite_micro import _version

    return f"tflite-micro {getattr(_version, '__version__', 'unknown')}"


def to_int8_input(qg: QuantizedGraph, x_nchw: np.ndarray) -> np.ndarray:
    """Float ``(N, C, H, W)`` dataset inputs as the model's int8 NHWC input (resized first where the model resizes)."""
    return qg.qparams[qg.graph.input].quantize(prepare_inputs(qg.graph, x_nchw).transpose(0, 2, 3, 1))


def tflm_accuracy(model: bytes, qg: QuantizedGraph, split: TensorSplit) -> tuple[float, np.ndarray]:
    """Test accuracy of the model run by tflite-micro, and its int8 outputs."""
    out = tflm_outputs(model, to_int8_input(qg, split.x.numpy()))
    return float((out.argmax(axis=1) == split.y.numpy()).mean()), out


# --- what the expansion to standard ops costs ----------------------------------------------


def dense_network(network: NetworkSpec) -> NetworkSpec:
    """``network`` with every weight stored dense: what the exported flatbuffer holds."""
    from dataclasses import replace

    from hw_models import Dense
    from hw_models import NetworkSpec as Spec

    layers = [
        replace(layer, weights={k: replace(w, structure=Dense()) for k, w in layer.weights.items()})
        for layer in network.layers
    ]
    return Spec(network.name, network.inputs, tuple(layers), network.tensors, network.outputs)


def expansion_table(network: NetworkSpec, device: Any, runtime: str) -> list[dict[str, Any]]:
    """One row per layer whose stored structure stock TFLite Micro kernels cannot run, with its dense cost.

    Costs come from hw_models on the job's device and runtime: the layer as searched
    (its real structure) against the dense layer the flatbuffer holds.
    """
    from hw_models import Dense, estimate
    from hw_models.ir import structure_to_dict

    changed = {
        layer.name: {
            k: structure_to_dict(w.structure) for k, w in layer.weights.items() if type(w.structure) is not Dense
        }
        for layer in network.layers
    }
    changed = {name: structures for name, structures in changed.items() if structures}
    if not changed:
        return []
    stored = {r.name: r for r in estimate(network, device, runtime).layers}
    expanded = {r.name: r for r in estimate(dense_network(network), device, runtime).layers}
    return [
        {
            "layer": name,
            "structures": structures,
            "expanded_to": "dense",
            "stored_params": stored[name].params,
            "expanded_params": expanded[name].params,
            "stored_model_bytes": stored[name].model_bytes,
            "expanded_model_bytes": expanded[name].model_bytes,
            "stored_macs": stored[name].macs,
            "expanded_macs": expanded[name].macs,
        }
        for name, structures in changed.items()
    ]


@register_format
class TFLiteExportFormat(BaseExportFormat):
    """``model.tflite`` (int8, TFLite Micro ops only) and ``model_data.cc`` / ``.h``, checked in tflite-micro."""

    name = "tflite"
    description = "int8 TFLite flatbuffer for TensorFlow Lite Micro, with a C array; run in tflite-micro"
    tolerance_pp = 1.0

    def write(self, trial: TrainedTrial, model: nn.Module, splits: DatasetSplits, directory: Path) -> FormatReport:
        from sparse_nas.export.onnx_format import calibration_samples

        graph = lower_model(model, splits.input_shape)
        samples = calibration_samples(splits, trial.spec.seed)
        qg = quantize_graph(graph, samples)
        data = write_tflite(qg, description=f"sparse-nas {trial.spec.name} trial {trial.number}")
        (directory / MODEL_FILE).write_bytes(data)
        source, header = c_array_files(data)
        (directory / C_SOURCE_FILE).write_text(source)
        (directory / C_HEADER_FILE).write_text(header)
        written = (directory / MODEL_FILE).read_bytes()
        accuracy, tflm_out = tflm_accuracy(written, qg, splits.test)
        reference = int8_forward(qg, to_int8_input(qg, splits.test.x.numpy()))
        diff = np.abs(tflm_out.astype(np.int32) - reference.reshape(len(reference), -1).astype(np.int32))
        arena = tflm_arena(written)
        arena.pop("record")
        qin, qout = qg.qparams[graph.input], qg.qparams[graph.output]
        network = trial.spec.build_search_space().network_from_model(model, trial.params)
        expanded = expansion_table(network, trial.spec.device_spec(), trial.spec.runtime)
        return FormatReport(
            model_file=MODEL_FILE,
            files=(MODEL_FILE, C_SOURCE_FILE, C_HEADER_FILE),
            test_accuracy=accuracy,
            runtime=tflm_version(),
            details={
                "schema_version": SCHEMA_VERSION,
                "model_bytes": len(written),
                "ops": [op.kind for op in graph.ops],
                "input": {
                    "shape": [1, *graph.shapes[graph.input]],
                    "layout": "NHWC",
                    "dtype": "int8",
                    "scale": qin.scale,
                    "zero_point": qin.zero_point,
                    "resized_from": list(splits.input_shape[1:]) if graph.input_resize else None,
                },
                "output": {
                    "shape": [1, *graph.shapes[graph.output]],
                    "dtype": "int8",
                    "scale": qout.scale,
                    "zero_point": qout.zero_point,
                },
                "c_array": {"source": C_SOURCE_FILE, "header": C_HEADER_FILE, "name": C_ARRAY_NAME},
                "quantization": {
                    "weights": "int8, symmetric, per output channel",
                    "biases": "int32, scale input_scale * weight_scale",
                    "activations": "int8, asymmetric, per tensor",
                    "calibration": "min/max",
                    "calibration_samples": len(samples),
                    "calibration_split": "train",
                    "calibration_seed": trial.spec.seed,
                },
                "expanded_layers": expanded,
                "expansion_note": (
                    "stock TFLite Micro kernels run dense weights only: every layer in expanded_layers is stored "
                    "as its dense equivalent (same outputs, the costs listed)"
                    if expanded
                    else None
                ),
                "lowering_notes": graph.notes,
                "arena": arena,
                "reference_match": {
                    "max_abs_diff_lsb": int(diff.max()),
                    "fraction_equal": float((diff == 0).mean()),
                    "reference": "sparse_nas.export.tflite_quant.int8_forward",
                },
            },
        )
