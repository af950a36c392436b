"""Export of trained trials: PyTorch, float ONNX and int8 QDQ ONNX bundles with a manifest; finalize.

Public surface:

* :func:`export_trial` writes a trial's zipped bundle in one format (:func:`format_names`:
  ``pytorch``, ``onnx``, ``onnx-int8``, ``tflite``), each with ``manifest.json``; docs/export.md
  and docs/tflite.md.
* :func:`finalize_trial` retrains a trial's point on train + validation for more epochs
  and stores the weights with the study; exports use them by default.
* :func:`rebuild_model` rebuilds a PyTorch bundle's model from ``architecture.json`` and
  ``state_dict.pt``.
* :class:`BaseExportFormat` is the extension point for formats (:func:`register_format`).
* :func:`to_inference_module` rewrites a trained model with standard torch layers only.

Errors: :class:`ExportError` and its subclasses (:mod:`sparse_nas.export.errors`).
"""

from __future__ import annotations

# Each format module registers its formats on import (the registry's order is theirs).
from sparse_nas.export import pytorch_format  # noqa: F401  isort: skip
from sparse_nas.export import onnx_format  # noqa: F401  isort: skip
from sparse_nas.export import tflite_format  # noqa: F401  isort: skip
from sparse_nas.export.architecture import architecture_of, rebuild_model
from sparse_nas.export.bundle import EXPORTS_SUBDIR, ExportResult, bundle_path, export_trial, safe_name
from sparse_nas.export.errors import (
    ExportError,
    ExportPathError,
    NoTrainedWeightsError,
    TrialNotFoundError,
    UnknownExportFormatError,
)
from sparse_nas.export.finalize import FINALIZE_EPOCH_FACTOR, FinalizeError, finalize_trial, running_trials
from sparse_nas.export.formats import BaseExportFormat, FormatReport, format_names, get_format, register_format
from sparse_nas.export.inference import to_inference_module
from sparse_nas.export.manifest import MANIFEST_FILE
from sparse_nas.export.trial import (
    WEIGHTS_CHOICES,
    FinalizedWeights,
    TrainedTrial,
    TrialSource,
    WeightsChoice,
    load_trained_trial,
)

__all__ = [
    "EXPORTS_SUBDIR",
    "FINALIZE_EPOCH_FACTOR",
    "MANIFEST_FILE",
    "WEIGHTS_CHOICES",
    "BaseExportFormat",
    "ExportError",
    "ExportPathError",
    "ExportResult",
    "FinalizeError",
    "FinalizedWeights",
    "FormatReport",
    "NoTrainedWeightsError",
    "TrainedTrial",
    "TrialNotFoundError",
    "TrialSource",
    "UnknownExportFormatError",
    "WeightsChoice",
    "architecture_of",
    "bundle_path",
    "export_trial",
    "finalize_trial",
    "format_names",
    "get_format",
    "load_trained_trial",
    "rebuild_model",
    "register_format",
    "running_trials",
    "safe_name",
    "to_inference_module",
]
