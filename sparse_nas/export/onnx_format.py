"""The ``onnx`` (float) and ``onnx-int8`` (QDQ, static quantisation) formats.

Both start from :func:`~sparse_nas.export.inference.to_inference_module`: compression
layers become their dense Gemm/Conv equivalents and quantisation-aware wrappers hand
over the quantised weights they trained with, so the graph holds standard ONNX ops
only. The float model is written by torch's TorchScript exporter (``dynamo=False``:
the torch.export-based one needs the ``onnxscript`` package, which this project does
not depend on), then checked with ``onnx.checker`` and run with onnxruntime.

``onnx-int8`` quantises that float model with onnxruntime's static quantisation
(``quantize_static``) in the QDQ format: weights int8 symmetric per output channel,
activations int8 asymmetric per tensor, the scheme of TFLite / TFLM int8 kernels. The
activation ranges are calibrated (min / max) on training samples drawn with the job's
seed. The graph is first pre-processed (``quant_pre_process``: shape inference and
Conv + BatchNorm folding), as onnxruntime recommends.

Inputs are named ``input`` (``(N, *input_shape)``, float32, normalised as the manifest
says) and outputs ``logits`` (``(N, classes)``); the batch dimension is dynamic.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparse_nas.export.formats import EVAL_BATCH_SIZE, BaseExportFormat, FormatReport, register_format
from sparse_nas.export.inference import to_inference_module

if TYPE_CHECKING:
    from torch import nn

    from sparse_nas.datasets import DatasetSplits, TensorSplit
    from sparse_nas.export.trial import TrainedTrial

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
"""ONNX opset of exported models (per-channel QDQ needs 13 or later)."""
FLOAT_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CALIBRATION_SAMPLES = 2048
"""Training samples whose activations set the int8 ranges (all of them when the split is smaller)."""
CALIBRATION_BATCH = 64


def export_float_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """Write ``model`` (any trained search-space model) as a float ONNX model with a dynamic batch."""
    import onnx
    import torch

    inference = to_inference_module(model)
    example = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one (see the module
        # docstring for why it is used); its warnings say nothing about this model.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            inference,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session on ``path`` with torch's thread count (tests and services share cores)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: Path, split: TensorSplit) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on a split, run by onnxruntime."""
    session = onnx_session(path)
    x, y = split.x.numpy(), split.y.numpy()
    correct = 0
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x[start : start + EVAL_BATCH_SIZE]})
        correct += int((logits.argmax(axis=1) == y[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / len(y)


def _runtime() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


def _versions() -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    return {
        "opset": OPSET,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "exporter": "torch.onnx.export(dynamo=False)",
    }


@register_format
class OnnxExportFormat(BaseExportFormat):
    """``model.onnx``: the float model, every compressed layer as its dense equivalent."""

    name = "onnx"
    description = "float ONNX (opset 17), checked with onnx.checker and run with onnxruntime"
    tolerance_pp = 0.5

    def write(self, trial: TrainedTrial, model: nn.Module, splits: DatasetSplits, directory: Path) -> FormatReport:
        path = directory / FLOAT_FILE
        export_float_onnx(model, splits.input_shape, path)
        return FormatReport(
            model_file=FLOAT_FILE,
            files=(FLOAT_FILE,),
            test_accuracy=onnx_accuracy(path, splits.test),
            runtime=_runtime(),
            details={**_versions(), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "precision": "float32"},
        )


class _TrainingSamples:
    """onnxruntime's CalibrationDataReader protocol (a ``get_next`` method) over calibration samples."""

    def __init__(self, x: np.ndarray, batch_size: int):
        self._x = x
        self._batch_size = batch_size
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self._x):
            return None
        batch = self._x[self._start : self._start + self._batch_size]
        self._start += self._batch_size
        return {INPUT_NAME: batch}


def calibration_samples(splits: DatasetSplits, seed: int, count: int = CALIBRATION_SAMPLES) -> np.ndarray:
    """``count`` training inputs drawn without replacement with ``seed`` (all when fewer)."""
    x = splits.train.x.numpy()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(x), size=min(count, len(x)), replace=False))
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


@register_format
class OnnxInt8ExportFormat(BaseExportFormat):
    """``model.int8.onnx``: QDQ int8 by onnxruntime static quantisation, calibrated on training data."""

    name = "onnx-int8"
    description = "int8 QDQ ONNX by onnxruntime static quantisation, calibrated on training samples"
    tolerance_pp = 1.0

    def write(self, trial: TrainedTrial, model: nn.Module, splits: DatasetSplits, directory: Path) -> FormatReport:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        samples = calibration_samples(splits, trial.spec.seed)
        reader = _TrainingSamples(samples, CALIBRATION_BATCH)
        path = directory / INT8_FILE
        with tempfile.TemporaryDirectory(prefix="sparse-nas-int8-") as tmp:
            float_path, prepared = Path(tmp) / FLOAT_FILE, Path(tmp) / "prepared.onnx"
            export_float_onnx(model, splits.input_shape, float_path)
            quant_pre_process(str(float_path), str(prepared))
            quantize_static(
                str(prepared),
                str(path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        import onnx

        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        return FormatReport(
            model_file=INT8_FILE,
            files=(INT8_FILE,),
            test_accuracy=onnx_accuracy(path, splits.test),
            runtime=_runtime(),
            details={
                **_versions(),
                "input_name": INPUT_NAME,
                "output_name": OUTPUT_NAME,
                "precision": "int8",
                "quantization": {
                    "tool": "onnxruntime.quantization.quantize_static",
                    "format": "QDQ",
                    "weights": "int8, symmetric, per output channel",
                    "activations": "int8, asymmetric, per tensor",
                    "calibration": "min/max",
                    "calibration_samples": len(samples),
                    "calibration_split": "train",
                    "calibration_seed": trial.spec.seed,
                },
            },
        )
