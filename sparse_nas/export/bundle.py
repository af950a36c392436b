"""Export one trial in one format: the format's files plus ``manifest.json``, zipped.

Bundles are written under an export directory (the service uses
``<artifact_dir>/exports``) at paths made only of generated parts: a slug and hash of
the study name, the trial number, the weights' kind and artifact id, and a registered
format name. Nothing a caller passes becomes a path component as given, and the final
path is checked to lie inside the export directory. A bundle is kept: the same trial,
weights and format are served from the file while this version of sparse-nas wrote it
for the same job id (an artifact never changes; finalizing again makes a new one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hw_models import estimate
from sparse_nas.datasets import load_dataset
from sparse_nas.export.errors import ExportPathError
from sparse_nas.export.formats import get_format, torch_accuracy
from sparse_nas.export.manifest import MANIFEST_FILE, build_manifest, producer
from sparse_nas.export.trial import TrainedTrial, TrialSource, WeightsChoice, load_trained_trial

EXPORTS_SUBDIR = "exports"
"""The service and the CLI keep bundles in ``<artifact_dir>/exports``."""
_UNSAFE = re.compile(r"[^0-9A-Za-z_-]+")


@dataclass(frozen=True)
class ExportResult:
    """A written bundle.

    Attributes:
        path: The zip file (inside the export directory).
        manifest: Its ``manifest.json``.
        cached: Whether an earlier identical export was reused.
    """

    path: Path
    manifest: dict[str, Any]
    cached: bool


def export_trial(
    source: TrialSource,
    number: int,
    format_name: str,
    *,
    export_dir: str | os.PathLike[str],
    weights: WeightsChoice = "auto",
    job_id: str | None = None,
) -> ExportResult:
    """Export trial ``number`` of the source's study as a zipped bundle in ``export_dir``.

    Args:
        source: The job's study, artifacts and data directory.
        number: The trial.
        format_name: One of :func:`~sparse_nas.export.formats.format_names`.
        export_dir: Root of the exports; bundles are written below it only.
        weights: ``auto`` (finalized when present, else search), ``search`` or ``finalized``.
        job_id: The service's job id, recorded in the manifest.

    Raises:
        UnknownExportFormatError: Unknown ``format_name`` (checked before anything is read).
        TrialNotFoundError: No such study or trial.
        NoTrainedWeightsError: The trial has no weights of that kind; the message says why.
        ExportPathError: The bundle path would leave ``export_dir``.
        sparse_nas.datasets.DatasetError: The job's dataset cannot be read.
    """
    export_format = get_format(format_name)
    trial = load_trained_trial(source, number, weights)
    root = Path(export_dir)
    target = bundle_path(root, trial, export_format.name)
    cached = _read_cached(target, job_id)
    if cached is not None:
        return ExportResult(path=target, manifest=cached, cached=True)

    splits = load_dataset(trial.spec.dataset_config(), source.data_dir)
    model = trial.build_model()
    space = trial.spec.build_search_space()
    network = space.network_from_model(model, trial.params)
    cost = estimate(network, trial.spec.device_spec(), trial.spec.runtime)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=target.parent) as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        report = export_format.write(trial, model, splits, bundle)
        manifest = build_manifest(
            trial=trial,
            export_format=export_format,
            report=report,
            splits=splits,
            network=network,
            cost=cost,
            pytorch_test_accuracy=torch_accuracy(model, splits.test),
            files={name: _describe(bundle / name) for name in report.files},
            job_id=job_id,
        )
        (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        staged = Path(tmp) / "bundle.zip"
        with zipfile.ZipFile(staged, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in (MANIFEST_FILE, *report.files):
                archive.write(bundle / name, arcname=name)
        os.replace(staged, target)
    return ExportResult(path=target, manifest=manifest, cached=False)


def bundle_path(export_dir: Path, trial: TrainedTrial, format_name: str) -> Path:
    """Where the bundle of this trial, weights and format is kept, below ``export_dir``.

    Raises:
        ExportPathError: The path would resolve outside ``export_dir``.
    """
    root = export_dir.resolve()
    target = (
        root
        / safe_name(trial.study_name)
        / f"trial-{int(trial.number)}"
        / f"{trial.weights}-{safe_name(trial.artifact_id)}-{safe_name(format_name)}.zip"
    ).resolve()
    if not target.is_relative_to(root):
        raise ExportPathError(f"export path {str(target)!r} would leave the export directory {str(root)!r}")
    return target


def safe_name(text: str, keep: int = 40) -> str:
    """A file-name-safe, collision-free form of ``text``: its safe characters, then a hash of all of it."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    stem = _UNSAFE.sub("_", text).strip("_")[:keep]
    return f"{stem}-{digest}" if stem else digest


def _describe(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _read_cached(target: Path, job_id: str | None) -> dict[str, Any] | None:
    """The manifest of a bundle already at ``target`` written by this version for this job id, else None."""
    if not target.is_file():
        return None
    try:
        with zipfile.ZipFile(target) as archive:
            manifest = json.loads(archive.read(MANIFEST_FILE))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    current = manifest.get("created_by") == producer() and manifest.get("job", {}).get("id") == job_id
    return manifest if current else None
