"""The export and finalize routes on a real finished service job: bundles, error codes, paths."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import get_args

import pytest
from fastapi.testclient import TestClient

from api import crud
from api.app import create_app
from api.db import make_engine, make_session_factory
from api.routes.export import ExportFormatName, WeightsName
from sparse_nas.export import WEIGHTS_CHOICES, format_names, load_trained_trial
from sparse_nas.spec import SearchJobSpec
from tests.export_tests.conftest import SPEC, ServiceJob

# Every test here reads the shared job, whose fixture trains it (a few seconds, once).
pytestmark = pytest.mark.slow


@pytest.fixture
def client(service_job: ServiceJob) -> Iterator[TestClient]:
    with TestClient(create_app(service_job.settings)) as c:
        yield c


def export_url(job_id: str, number: int | str) -> str:
    return f"/api/jobs/{job_id}/trials/{number}/export"


def bundle(response) -> tuple[dict, set[str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return json.loads(archive.read("manifest.json")), set(archive.namelist())


def assert_error(response, status: int, loc: list, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert [e["loc"] for e in body["errors"]][:1] == [loc], body
    for fragment in fragments:
        assert fragment in body["detail"], body


def test_the_routes_offer_exactly_the_export_formats_and_weights():
    assert list(get_args(ExportFormatName)) == format_names()
    assert get_args(WeightsName) == WEIGHTS_CHOICES


def test_export_answers_a_zip_bundle_with_its_manifest(client, service_job: ServiceJob):
    number = service_job.second.number
    response = client.get(export_url(service_job.job_id, number), params={"format": "pytorch", "weights": "search"})
    manifest, names = bundle(response)
    assert names == {"manifest.json", "state_dict.pt", "architecture.json", "network.json", "README.md"}
    assert manifest["job"]["id"] == service_job.job_id
    assert manifest["trial"]["number"] == number
    assert manifest["accuracy"]["test_accuracy"] == service_job.second.measured["test_accuracy"]
    assert (
        f'filename="{service_job.job_id}-trial-{number}-search-pytorch.zip"' in response.headers["content-disposition"]
    )

    manifest, names = bundle(client.get(export_url(service_job.job_id, number), params={"format": "onnx-int8"}))
    assert names == {"manifest.json", "model.int8.onnx"}
    assert manifest["format"] == "onnx-int8" and manifest["weights"]["kind"] == "search"
    assert manifest["format_details"]["quantization"]["format"] == "QDQ"


def test_unknown_job_or_trial_is_404(client, service_job: ServiceJob):
    assert_error(
        client.get(export_url("no-such-job", 0), params={"format": "onnx"}), 404, ["path", "job_id"], "does not exist"
    )
    response = client.get(export_url(service_job.job_id, 999), params={"format": "onnx"})
    assert_error(response, 404, ["path", "number"], "has no trial 999")
    assert_error(client.post(f"/api/jobs/{service_job.job_id}/trials/999/finalize"), 404, ["path", "number"])


def test_bad_format_weights_or_number_is_422_naming_the_field(client, service_job: ServiceJob):
    url = export_url(service_job.job_id, service_job.second.number)
    response = client.get(url, params={"format": "coreml"})
    assert_error(response, 422, ["query", "format"])
    assert "'pytorch', 'onnx', 'onnx-int8' or 'tflite'" in response.json()["errors"][0]["msg"]
    assert_error(client.get(url), 422, ["query", "format"])
    assert_error(client.get(url, params={"format": "onnx", "weights": "best"}), 422, ["query", "weights"])
    assert_error(client.get(export_url(service_job.job_id, -1), params={"format": "onnx"}), 422, ["path", "number"])
    finalize = f"/api/jobs/{service_job.job_id}/trials/{service_job.second.number}/finalize"
    assert_error(client.post(finalize, params={"epochs": 0}), 422, ["query", "epochs"])


def test_a_trial_without_trained_weights_is_409_saying_why(client, service_job: ServiceJob):
    response = client.get(export_url(service_job.job_id, service_job.infeasible.number), params={"format": "onnx"})
    assert_error(response, 409, ["path", "number"], "has no trained weights", "never trained", "SRAM")
    response = client.get(
        export_url(service_job.job_id, service_job.second.number), params={"format": "onnx", "weights": "finalized"}
    )
    assert_error(response, 409, ["path", "number"], "has not been finalized")
    finalize = f"/api/jobs/{service_job.job_id}/trials/{service_job.infeasible.number}/finalize"
    assert_error(client.post(finalize), 409, ["path", "number"], "never trained")


def test_paths_in_parameters_never_reach_the_file_system(client, service_job: ServiceJob):
    before = {p for p in service_job.root.rglob("*")}
    for job_id in ("..", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "job-..%00"):
        response = client.get(export_url(job_id, 0), params={"format": "onnx"})
        assert response.status_code == 404, (job_id, response.text)
    for format_name in ("../../../etc/passwd", "/etc/passwd", "onnx/../pytorch", "..\\..\\x"):
        response = client.get(export_url(service_job.job_id, service_job.second.number), params={"format": format_name})
        assert_error(response, 422, ["query", "format"])
    for number in ("..", "0%2F..%2F..", "1e3"):
        assert client.get(export_url(service_job.job_id, number), params={"format": "onnx"}).status_code in (404, 422)
    assert {p for p in service_job.root.rglob("*")} == before
    exports = service_job.export_dir.resolve()
    assert all(p.resolve().is_relative_to(exports) for p in exports.rglob("*"))


def _queued_job(settings) -> str:
    """A second job of the same database, never run: it stays queued."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            return crud.create_job(session, SearchJobSpec.model_validate(SPEC | {"name": "queued"}))[0].id
    finally:
        engine.dispose()


def test_finalize_stores_retrained_weights_that_exports_then_use(job_copy: ServiceJob):
    with TestClient(create_app(job_copy.settings)) as client:
        queued = _queued_job(job_copy.settings)
        response = client.post(f"/api/jobs/{queued}/trials/0/finalize")
        assert_error(response, 409, ["path", "job_id"], "cannot finalize", "'queued'")

        trial = job_copy.second
        response = client.post(f"/api/jobs/{job_copy.job_id}/trials/{trial.number}/finalize", params={"epochs": 3})
        assert response.status_code == 200, response.text
        done = response.json()
        assert (done["job_id"], done["number"], done["epochs"], done["train_samples"]) == (
            job_copy.job_id,
            trial.number,
            3,
            1438,
        )
        stored = load_trained_trial(job_copy.source(), trial.number)
        assert stored.weights == "finalized" and stored.test_accuracy == done["test_accuracy"]

        manifest, _ = bundle(client.get(export_url(job_copy.job_id, trial.number), params={"format": "onnx"}))
        assert manifest["weights"] == {
            "kind": "finalized",
            "artifact_id": done["artifact_id"],
            "description": "retrained on train + validation for more epochs (finalize)",
        }
        assert manifest["accuracy"]["test_accuracy"] == done["test_accuracy"]
        assert manifest["check"]["pytorch_test_accuracy"] == done["test_accuracy"]
