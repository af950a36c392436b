"""Export of a real tiny job's trials: every format read back and scored, manifests, finalize, errors, paths."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hw_models import NetworkSpec, estimate
from sparse_nas.datasets import DatasetSplits
from sparse_nas.export import (
    NoTrainedWeightsError,
    TrialNotFoundError,
    TrialSource,
    UnknownExportFormatError,
    bundle_path,
    export_trial,
    format_names,
    load_trained_trial,
    rebuild_model,
)
from tests.export_tests.conftest import SPEC, ServiceJob

# Every test here reads the shared job, whose fixture trains it (a few seconds, once).
pytestmark = pytest.mark.slow

TOLERANCE_PP = {"pytorch": 0.5, "onnx": 0.5, "onnx-int8": 1.0}
"""The issue's bar: each format within 0.5 percentage points of the PyTorch model, int8 within 1."""


def _accuracy(logits: np.ndarray, labels: torch.Tensor) -> float:
    return float((logits.argmax(axis=1) == labels.numpy()).mean())


def _unzip(path: Path, into: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        archive.extractall(into)
    return json.loads((into / "manifest.json").read_text())


def _read_back_accuracy(format_name: str, bundle: Path, manifest: dict, splits: DatasetSplits) -> float:
    """Test accuracy of the bundle's model, loaded the way its user would load it."""
    if format_name == "pytorch":
        model = rebuild_model(
            json.loads((bundle / "architecture.json").read_text()),
            torch.load(bundle / "state_dict.pt", weights_only=True),
        )
        with torch.no_grad():
            return _accuracy(model(splits.test.x).numpy(), splits.test.y)
    path = bundle / manifest["model_file"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {manifest["input"]["name"]: splits.test.x.numpy()})
    return _accuracy(logits, splits.test.y)


@pytest.mark.parametrize("format_name", ["pytorch", "onnx", "onnx-int8"])
def test_each_format_loads_back_within_tolerance_of_the_pytorch_model(
    service_job: ServiceJob, finalized, splits, format_name, tmp_path
):
    trial = load_trained_trial(service_job.source(), service_job.best.number)
    assert trial.weights == "finalized"
    with torch.no_grad():
        reference = _accuracy(trial.build_model()(splits.test.x).numpy(), splits.test.y)
    assert reference == pytest.approx(finalized.test_accuracy, abs=1e-12)

    result = export_trial(service_job.source(), service_job.best.number, format_name, export_dir=service_job.export_dir)
    manifest = _unzip(result.path, tmp_path)
    exported = _read_back_accuracy(format_name, tmp_path, manifest, splits)

    assert abs(exported - reference) * 100 <= TOLERANCE_PP[format_name], (format_name, exported, reference)
    assert manifest["check"]["exported_test_accuracy"] == pytest.approx(exported, abs=1e-12)
    assert manifest["check"]["pytorch_test_accuracy"] == pytest.approx(reference, abs=1e-12)
    assert manifest["check"]["within_tolerance"]
    for name, described in manifest["files"].items():
        assert (tmp_path / name).stat().st_size == described["bytes"]


def test_int8_model_is_qdq_with_int8_weights_and_float_model_has_only_standard_ops(
    service_job: ServiceJob, finalized, tmp_path
):
    number = service_job.best.number
    int8 = export_trial(service_job.source(), number, "onnx-int8", export_dir=service_job.export_dir)
    fp32 = export_trial(service_job.source(), number, "onnx", export_dir=service_job.export_dir)
    int8_model = onnx.load_from_string(zipfile.ZipFile(int8.path).read("model.int8.onnx"))
    float_model = onnx.load_from_string(zipfile.ZipFile(fp32.path).read("model.onnx"))

    int8_ops = {node.op_type for node in int8_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= int8_ops
    weights = [t for t in int8_model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert weights, "the conv and dense weights are stored as int8"
    assert {node.op_type for node in float_model.graph.node} <= {
        "Conv",
        "BatchNormalization",
        "Relu",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "MatMul",
        "Add",
        # ZeroPad2d (SAME padding at stride 2 on even sizes): the TorchScript exporter
        # writes Pad with its pads computed by a few shape ops.
        "Pad",
        "Slice",
        "Cast",
        "ConstantOfShape",
        "Reshape",
        "Transpose",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Concat",
        "Constant",
    }
    assert float_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_manifest_figures_equal_the_trials_stored_figures(service_job: ServiceJob, splits, tmp_path):
    record = service_job.second
    result = export_trial(service_job.source(), record.number, "pytorch", export_dir=service_job.export_dir)
    manifest = _unzip(result.path, tmp_path)

    assert manifest["weights"]["kind"] == "search"
    assert manifest["trial"] == {"number": record.number, "status": "complete", "params": record.params}
    assert manifest["accuracy"]["val_accuracy"] == record.measured["val_accuracy"]
    assert manifest["accuracy"]["test_accuracy"] == record.measured["test_accuracy"]
    assert manifest["accuracy"]["search"]["epochs"] == SPEC["training"]["epochs"]
    assert manifest["search_costs"] == record.costs
    assert manifest["cost"]["nonzero_params"] == record.measured["nonzero_params"]
    # The PyTorch model reproduces the stored test accuracy exactly.
    assert manifest["check"]["pytorch_test_accuracy"] == record.measured["test_accuracy"]
    assert manifest["check"]["exported_test_accuracy"] == record.measured["test_accuracy"]

    assert manifest["dataset"]["name"] == "digits"
    assert manifest["dataset"]["label_names"] == [str(d) for d in range(10)]
    assert manifest["input"]["shape"] == ["batch", 1, 8, 8]
    norm = manifest["input"]["normalization"]
    assert (norm["mean"], norm["std"], norm["dim"], norm["scale"]) == (
        list(splits.normalization.mean),
        list(splits.normalization.std),
        -3,
        1 / 16,
    )
    assert manifest["device"] == {"name": "stm32f446re", "runtime": "tflm"}
    assert manifest["job"]["id"] is None and manifest["job"]["study_name"] == service_job.study_name

    # The predicted costs are those of the bundle's own network on the job's device.
    network = NetworkSpec.from_json((tmp_path / "network.json").read_text())
    report = estimate(network, "stm32f446re", "tflm").to_dict()
    assert json.loads(json.dumps(report)) == manifest["cost"]
    # One compression row per weighted layer: every conv block and dense layer, and the classifier.
    p = record.params
    expected = {f"conv{i}" for i in range(p["n_conv"])} | {f"dense{j}" for j in range(p["n_dense"])} | {"classifier"}
    expected |= {f"conv{i}_dw" for i in range(p["n_conv"]) if p[f"conv{i}_separable"]}
    rows = {row["layer"]: row for row in manifest["compression"]}
    assert set(rows) == expected
    for i in range(p["n_conv"]):
        structure = rows[f"conv{i}"]["weights"]["weight"]["structure"]
        assert structure["kind"] == "sparse" and structure["density"] == pytest.approx(p[f"conv{i}_density"], abs=0.02)
    assert sum(row["nonzero_params"] for row in rows.values()) == manifest["cost"]["nonzero_params"]


def test_finalize_improves_or_keeps_test_accuracy_and_becomes_the_default_export(service_job: ServiceJob, finalized):
    best = service_job.best
    assert finalized.test_accuracy >= best.measured["test_accuracy"]
    assert finalized.epochs == 8 and finalized.train_samples == 1438  # train + validation: all of digits' training set

    auto = load_trained_trial(service_job.source(), best.number)
    assert (auto.weights, auto.test_accuracy, auto.val_accuracy) == ("finalized", finalized.test_accuracy, None)
    search = load_trained_trial(service_job.source(), best.number, "search")
    assert search.weights == "search" and search.test_accuracy == best.measured["test_accuracy"]
    assert search.artifact_id == best.artifact_id != auto.artifact_id

    result = export_trial(service_job.source(), best.number, "pytorch", export_dir=service_job.export_dir)
    accuracy = result.manifest["accuracy"]
    assert result.manifest["weights"]["kind"] == "finalized"
    assert accuracy["test_accuracy"] == finalized.test_accuracy and accuracy["val_accuracy"] is None
    assert accuracy["finalized"] == finalized.to_dict()
    assert accuracy["search"]["test_accuracy"] == best.measured["test_accuracy"]


def test_an_export_is_kept_and_served_again(service_job: ServiceJob):
    number = service_job.second.number
    first = export_trial(service_job.source(), number, "pytorch", export_dir=service_job.export_dir)
    again = export_trial(service_job.source(), number, "pytorch", export_dir=service_job.export_dir)
    assert again.cached and again.path == first.path and again.manifest == first.manifest


def test_unknown_format_trial_or_study_and_untrained_trials_are_refused(service_job: ServiceJob):
    source, export_dir = service_job.source(), service_job.export_dir
    with pytest.raises(UnknownExportFormatError, match="valid: pytorch, onnx, onnx-int8, tflite"):
        export_trial(source, service_job.second.number, "coreml", export_dir=export_dir)
    with pytest.raises(TrialNotFoundError, match="has no trial 99; it has trials 0-4"):
        export_trial(source, 99, "onnx", export_dir=export_dir)
    with pytest.raises(TrialNotFoundError, match="does not exist"):
        export_trial(dataclasses.replace(source, study_name="no-such-study"), 0, "onnx", export_dir=export_dir)
    infeasible = service_job.infeasible
    with pytest.raises(NoTrainedWeightsError, match=r"never trained: SRAM .* exceeds the limit 21,000 B"):
        export_trial(source, infeasible.number, "onnx", export_dir=export_dir)
    with pytest.raises(NoTrainedWeightsError, match="has not been finalized"):
        export_trial(source, service_job.second.number, "onnx", export_dir=export_dir, weights="finalized")
    assert format_names() == ["pytorch", "onnx", "onnx-int8", "tflite"]


def test_missing_weights_files_are_reported_not_crashed_on(service_job: ServiceJob, tmp_path):
    elsewhere = TrialSource(service_job.url, service_job.study_name, tmp_path / "empty-artifacts")
    with pytest.raises(NoTrainedWeightsError, match="missing from the artifact store"):
        load_trained_trial(elsewhere, service_job.second.number)


@pytest.mark.parametrize(
    ("study_name", "artifact_id", "format_name"),
    [
        ("../../../../etc", "../../passwd", "onnx"),
        ("/absolute/path", "/etc/shadow", "../../x"),
        ("a/b\\c:d\x00e", "..", "~root"),
        ("..", ".", "pytorch/../../.."),
        ("ünïcødé ☃ name", "x" * 500, "onnx-int8"),
    ],
)
def test_bundle_paths_never_leave_the_export_directory(
    service_job: ServiceJob, tmp_path, study_name, artifact_id, format_name
):
    trial = load_trained_trial(service_job.source(), service_job.second.number, "search")
    hostile = dataclasses.replace(trial, study_name=study_name, artifact_id=artifact_id)
    root = tmp_path / "exports"
    path = bundle_path(root, hostile, format_name)
    assert path.is_relative_to(root.resolve())
    assert all(part not in ("..", ".") for part in path.relative_to(root.resolve()).parts)
    assert len(path.relative_to(root.resolve()).parts) == 3
