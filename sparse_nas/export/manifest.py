"""``manifest.json``: what an exported model is, how to feed it, how good it is and what it costs.

Every bundle carries one (docs/export.md lists the fields). Its figures are the
trial's stored ones (accuracy, planned costs), plus what the export measured: the
predicted :class:`~hw_models.CostReport` of the trained network (its real pruning
masks) on the job's device, and the exported model's test accuracy read back from its
own files against the PyTorch model's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from hw_models import CostReport, NetworkSpec
from sparse_nas.export.architecture import architecture_of

if TYPE_CHECKING:
    from sparse_nas.datasets import DatasetSplits
    from sparse_nas.export.formats import BaseExportFormat, FormatReport
    from sparse_nas.export.trial import TrainedTrial

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
_WEIGHTS_DESCRIPTIONS = {
    "search": "trained by the search (train split, the job's epochs)",
    "finalized": "retrained on train + validation for more epochs (finalize)",
}


def producer() -> str:
    """``sparse-nas <version>``: the code that wrote a bundle (a cached bundle of another version is rebuilt)."""
    try:
        return f"sparse-nas {version('sparse-nas')}"
    except PackageNotFoundError:
        return "sparse-nas 0+unknown"


def build_manifest(
    *,
    trial: TrainedTrial,
    export_format: BaseExportFormat,
    report: FormatReport,
    splits: DatasetSplits,
    network: NetworkSpec,
    cost: CostReport,
    pytorch_test_accuracy: float,
    files: dict[str, dict[str, Any]],
    job_id: str | None = None,
) -> dict[str, Any]:
    """The manifest of one bundle.

    Args:
        trial: The exported trial and weights.
        export_format: The format written.
        report: What the format wrote and its read-back test accuracy.
        splits: The job's dataset, as trained on (labels, shapes, normalisation).
        network: The trained model's hw_models network (real masks and structures).
        cost: ``estimate(network, device, runtime)`` on the job's device and runtime.
        pytorch_test_accuracy: The PyTorch model's test accuracy, measured for the check.
        files: File name -> ``{"bytes", "sha256"}`` of every model file of the bundle.
        job_id: The service's job id, when the trial belongs to a service job.
    """
    spec = trial.spec
    record = trial.record
    delta_pp = 100.0 * (report.test_accuracy - pytorch_test_accuracy)
    norm = splits.normalization
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_by": producer(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": export_format.name,
        "format_description": export_format.description,
        "model_file": report.model_file,
        "files": files,
        "job": {"id": job_id, "study_name": trial.study_name, "name": spec.name, "seed": spec.seed},
        "trial": {"number": record.number, "status": record.status, "params": record.params},
        "weights": {
            "kind": trial.weights,
            "artifact_id": trial.artifact_id,
            "description": _WEIGHTS_DESCRIPTIONS[trial.weights],
        },
        "dataset": {
            "name": splits.name,
            "options": dict(spec.dataset.options),
            "val_fraction": spec.dataset.val_fraction,
            "train_subset": spec.dataset.train_subset,
            "binary_groups": spec.dataset.binary_groups,
            "num_classes": splits.num_classes,
            "label_names": list(splits.class_names),
            "samples": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        },
        "input": {
            "name": report.details.get("input_name"),
            "shape": ["batch", *splits.input_shape],
            "layout": "NCHW" if len(splits.input_shape) == 3 else "NTF",
            "dtype": "float32",
            "normalization": {
                "mean": list(norm.mean),
                "std": list(norm.std),
                "dim": norm.dim,
                "scale": norm.scale,
                "formula": "input = (raw * scale - mean[c]) / std[c], c indexing dimension `dim` of the sample",
            },
        },
        "output": {
            "name": report.details.get("output_name"),
            "shape": ["batch", splits.num_classes],
            "meaning": "class logits; the argmax indexes label_names",
        },
        "architecture": architecture_of(spec, record.params),
        "compression": compression_table(network, cost),
        "accuracy": {
            "weights": trial.weights,
            "val_accuracy": trial.val_accuracy,
            "test_accuracy": trial.test_accuracy,
            "search": {
                "val_accuracy": record.measured.get("val_accuracy"),
                "test_accuracy": record.measured.get("test_accuracy"),
                "epochs": record.measured.get("epochs_completed"),
            },
            "finalized": trial.finalized.to_dict() if trial.finalized is not None else None,
        },
        "check": {
            "split": "test",
            "samples": len(splits.test),
            "pytorch_test_accuracy": pytorch_test_accuracy,
            "exported_test_accuracy": report.test_accuracy,
            "runtime": report.runtime,
            "delta_pp": delta_pp,
            "tolerance_pp": export_format.tolerance_pp,
            "within_tolerance": abs(delta_pp) <= export_format.tolerance_pp + 1e-9,
        },
        "device": {"name": cost.device, "runtime": cost.runtime},
        "search_costs": dict(record.costs),
        "cost": cost.to_dict(),
        "format_details": report.details,
    }


def compression_table(network: NetworkSpec, cost: CostReport) -> list[dict[str, Any]]:
    """One row per layer with weights: their shape, bits and structure, and the layer's predicted size."""
    costs = {layer.name: layer for layer in cost.layers}
    rows = []
    for layer in network.to_dict()["layers"]:
        if not layer["weights"]:
            continue
        row: dict[str, Any] = {"layer": layer["name"], "op": layer["op"], "weights": layer["weights"]}
        reported = costs.get(layer["name"])
        if reported is not None:
            row |= {
                "params": reported.params,
                "nonzero_params": reported.nonzero_params,
                "model_bytes": reported.model_bytes,
                "macs": reported.macs,
            }
        rows.append(row)
    return rows
