"""`sparse-nas export` and `sparse-nas finalize` on a real finished job: files written, exit codes, messages."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import optuna
import pytest

from api.cli import main
from sparse_nas.export import load_trained_trial
from tests.export_tests.conftest import ServiceJob

# Every test here reads the shared job, whose fixture trains it (a few seconds, once).
pytestmark = pytest.mark.slow


def local_flags(job: ServiceJob) -> list[str]:
    """Where the job is, given explicitly (the CLI's settings are read once per process)."""
    return [
        "--storage",
        job.url,
        "--artifacts",
        str(job.settings.resolved_artifact_dir()),
        "--data-dir",
        str(job.settings.data_dir),
    ]


def manifest_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("manifest.json"))


def test_export_writes_the_bundle_for_a_job_id_or_its_study_name(service_job: ServiceJob, tmp_path, capsys):
    number = service_job.second.number
    out = tmp_path / "bundle.zip"
    argv = ["export", service_job.job_id, str(number), "--format", "pytorch", "--weights", "search", "-o", str(out)]
    assert main([*argv, *local_flags(service_job)]) == 0
    printed = capsys.readouterr().out
    assert f"trial {number} (search weights) exported as pytorch to {out}" in printed
    assert "within the 0 pp tolerance" in printed
    manifest = manifest_of(out)
    assert manifest["job"]["id"] == service_job.job_id
    assert manifest["accuracy"]["test_accuracy"] == service_job.second.measured["test_accuracy"]

    by_study = tmp_path / "by-study.zip"
    argv = ["export", service_job.study_name, str(number), "--format", "pytorch", "--weights", "search"]
    assert main([*argv, "-o", str(by_study), *local_flags(service_job)]) == 0
    assert manifest_of(by_study)["weights"] == manifest["weights"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{job}", "{second}", "--format", "coreml"],
            "unknown export format 'coreml'; valid: pytorch, onnx, onnx-int8, tflite",
        ),
        (["{job}", "99", "--format", "onnx"], "has no trial 99"),
        (["{job}", "{infeasible}", "--format", "onnx"], "has no trained weights: it breaks the job's limits"),
        (["{job}", "{second}", "--format", "onnx", "--weights", "finalized"], "has not been finalized"),
        (["{job}", "{second}", "--format", "onnx", "--weights", "best"], "weights: unknown choice 'best'"),
        (["no-such-job", "0", "--format", "onnx"], "study 'no-such-job' does not exist"),
    ],
)
def test_export_errors_exit_2_with_the_reason(service_job: ServiceJob, tmp_path, capsys, args, message):
    values = {
        "job": service_job.job_id,
        "second": service_job.second.number,
        "infeasible": service_job.infeasible.number,
    }
    argv = ["export", *(a.format(**values) for a in args), "-o", str(tmp_path / "x.zip"), *local_flags(service_job)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def test_finalize_refuses_a_job_that_is_not_finished(job_copy: ServiceJob, capsys):
    with sqlite3.connect(job_copy.root / "service.db") as db:
        db.execute("UPDATE sparse_nas_jobs SET status = 'running' WHERE id = ?", (job_copy.job_id,))
    argv = ["finalize", job_copy.job_id, str(job_copy.second.number), *local_flags(job_copy)]
    assert main(argv) == 2
    assert "cannot finalize job" in capsys.readouterr().err
    assert load_trained_trial(job_copy.source(), job_copy.second.number).weights == "search"


def test_finalize_then_export_in_one_command(job_copy: ServiceJob, tmp_path, capsys):
    number = job_copy.second.number
    out = tmp_path / "final.zip"
    argv = ["finalize", job_copy.job_id, str(number), "--epochs", "2", "--format", "onnx", "-o", str(out)]
    assert main([*argv, *local_flags(job_copy)]) == 0
    printed = capsys.readouterr().out
    assert f"trial {number} finalized: 2 epochs on 1438 samples" in printed
    manifest = manifest_of(out)
    stored = load_trained_trial(job_copy.source(), number)
    assert manifest["weights"]["kind"] == stored.weights == "finalized"
    assert manifest["accuracy"]["test_accuracy"] == stored.test_accuracy


def test_finalize_checks_the_format_before_training(job_copy: ServiceJob, capsys):
    argv = ["finalize", job_copy.job_id, str(job_copy.second.number), "--format", "tflm", *local_flags(job_copy)]
    assert main(argv) == 2
    assert "unknown export format 'tflm'" in capsys.readouterr().err
    assert load_trained_trial(job_copy.source(), job_copy.second.number).weights == "search"


def test_finalize_refuses_a_plain_study_that_has_running_trials(job_copy: ServiceJob, capsys):
    optuna.load_study(study_name=job_copy.study_name, storage=job_copy.url).ask()
    argv = ["finalize", job_copy.study_name, str(job_copy.second.number), *local_flags(job_copy)]
    assert main(argv) == 2
    assert f"study {job_copy.study_name!r} has trials [5] running" in capsys.readouterr().err
