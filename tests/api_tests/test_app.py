"""The REST API through FastAPI's TestClient: every route, every error status, auth, limits.

Each test gets its own SQLite file and settings object (no SPARSE_NAS_* variable leaks
in). Trials are written straight into the job's Optuna study here; the real engine runs
in test_api_jobs.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from optuna.trial import TrialState, create_trial

from api import crud
from api.app import InsecureBindError, create_app, is_loopback
from api.schemas import EXAMPLE_JOB_SPEC
from api.settings import Settings
from hw_models import get_device, list_devices

TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def _no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SPARSE_NAS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'service.db'}",
        host="127.0.0.1",
        api_token=None,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        # These tests write trials themselves and read them back at once: no reuse window.
        app.state.study_reader.max_age_s = 0.0
        yield c


def submit(client: TestClient, **changes) -> dict:
    response = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC | changes)
    assert response.status_code == 201, response.text
    return response.json()


def error_locs(response) -> list[list]:
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    return [e["loc"] for e in body["errors"]]


# --- health, root, start-up --------------------------------------------------------------


def test_health_probes_answer(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    # "/" is the dashboard's page (tests/browser_tests drive it).
    root = client.get("/")
    assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
    assert "sparse-nas" in root.text


def test_readyz_is_503_when_the_database_is_unreachable(app, client, tmp_path):
    from api.db.session import make_engine

    app.state.engine = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'nope.db'}")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("database unreachable")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.4.5.6", "::1", "localhost", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_create_app_refuses_a_public_host_without_a_token(settings, host):
    with pytest.raises(InsecureBindError, match="SPARSE_NAS_API_TOKEN"):
        create_app(settings.model_copy(update={"host": host}))
    create_app(settings.model_copy(update={"host": host, "api_token": TOKEN}))


# --- auth -------------------------------------------------------------------------------


def test_token_is_required_on_every_api_route_but_not_on_health(settings):
    app = create_app(settings.model_copy(update={"api_token": TOKEN}))
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for method, path in (("GET", "/api/jobs"), ("GET", "/api/devices"), ("POST", "/api/jobs")):
                response = client.request(method, path, headers=headers, json=EXAMPLE_JOB_SPEC)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "bearer token" in response.json()["detail"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/jobs", headers=auth).status_code == 200
        assert client.post("/api/jobs", headers=auth, json=EXAMPLE_JOB_SPEC).status_code == 201
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


# --- submitting and reading jobs ---------------------------------------------------------------


def test_submit_then_read_the_job(client):
    job = submit(client)
    assert job["status"] == "queued"
    assert job["progress"] == {"trials_done": 0, "n_trials": 3, "fraction": 0.0}
    assert job["spec"]["training"]["epochs"] == 1 and job["spec"]["seed"] == 0  # stored with every field
    assert job["study_name"] and job["created_at"].endswith("Z")
    read = client.get(f"/api/jobs/{job['id']}").json()
    assert read == job


def test_idempotent_submit_returns_the_same_job(client):
    headers = {"Idempotency-Key": "retry-1"}
    first = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC, headers=headers)
    second = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert client.get("/api/jobs").json()["total"] == 1
    other = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC | {"n_trials": 4}, headers=headers)
    assert other.status_code == 409
    assert error_locs(other) == [["header", "Idempotency-Key"]]
    assert client.post("/api/jobs", json=EXAMPLE_JOB_SPEC, headers={"Idempotency-Key": ""}).status_code == 422


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"budgets": {"max_sram_bytes": -1}}, ["body", "budgets", "max_sram_bytes"]),
        ({"dataset": {"name": "imagenet"}}, ["body", "dataset", "name"]),
        ({"n_trials": 0}, ["body", "n_trials"]),
        ({"strategy": "grid"}, ["body", "strategy"]),
        ({"budget": {}}, ["body", "budget"]),
        ({"device": "no_such_board"}, ["body", "device"]),
        (
            {"search_space": {"name": "sparse_cnn", "options": {"channels": "many"}}},
            ["body", "search_space", "options", "channels"],
        ),
    ],
)
def test_an_invalid_spec_is_a_422_naming_the_field(client, changes, loc):
    response = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC | changes)
    assert response.status_code == 422, response.text
    assert loc in error_locs(response)
    assert all(e["msg"] and e["type"] for e in response.json()["errors"])


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"NaN", b"{" * 100_000])
def test_a_body_that_is_not_a_spec_object_is_a_422(client, content):
    response = client.post("/api/jobs", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_locs(response)[0][0] == "body"


def test_a_body_over_max_body_bytes_is_a_413(settings):
    app = create_app(settings.model_copy(update={"max_body_bytes": 2048}))
    padded = EXAMPLE_JOB_SPEC | {"name": "x" * 4096}
    with TestClient(app) as client:
        declared = client.post("/api/jobs", json=padded)
        assert declared.status_code == 413
        assert error_locs(declared) == [["body"]]

        def chunks():
            for _ in range(8):
                yield b" " * 1024

        streamed = client.post("/api/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/api/jobs", json=EXAMPLE_JOB_SPEC).status_code == 201


def test_list_jobs_pages_and_filters(client):
    ids = [submit(client, name=f"job-{i}")["id"] for i in range(5)]
    first = client.get("/api/jobs", params={"limit": 2}).json()
    assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
    pages = [client.get("/api/jobs", params={"limit": 2, "offset": o}).json()["items"] for o in (0, 2, 4)]
    seen = [job["id"] for page in pages for job in page]
    assert seen == ids[::-1]  # newest first, each job once
    client.post(f"/api/jobs/{ids[0]}/cancel")
    cancelled = client.get("/api/jobs", params={"status": "cancelled"}).json()
    assert cancelled["total"] == 1 and cancelled["items"][0]["id"] == ids[0]
    assert client.get("/api/jobs", params={"status": "queued"}).json()["total"] == 4
    for params, loc in (
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
        ({"offset": -1}, ["query", "offset"]),
        ({"status": "paused"}, ["query", "status"]),
        ({"limit": "ten"}, ["query", "limit"]),
    ):
        response = client.get("/api/jobs", params=params)
        assert response.status_code == 422 and error_locs(response) == [loc], params


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/jobs/{id}"),
        ("POST", "/api/jobs/{id}/cancel"),
        ("POST", "/api/jobs/{id}/resume"),
        ("DELETE", "/api/jobs/{id}"),
        ("GET", "/api/jobs/{id}/trials"),
        ("GET", "/api/jobs/{id}/trials/0"),
        ("GET", "/api/jobs/{id}/pareto"),
    ],
)
def test_an_unknown_job_is_a_404(client, method, path):
    response = client.request(method, path.format(id="0123456789abcdef"))
    assert response.status_code == 404
    assert error_locs(response) == [["path", "job_id"]]
    assert "'0123456789abcdef' does not exist" in response.json()["detail"]


def test_cancel_resume_and_delete_follow_the_lifecycle(app, client):
    job_id = submit(client)["id"]
    assert client.post(f"/api/jobs/{job_id}/resume").status_code == 409  # queued: nothing to resume
    assert client.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    again = client.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cannot cancel" in again.json()["detail"]
    assert client.post(f"/api/jobs/{job_id}/resume").json()["status"] == "queued"

    with app.state.session_factory() as session:  # a worker takes the job
        assert crud.claim_next_job(session, "test-worker", stale_after_s=60).id == job_id
    running = client.get(f"/api/jobs/{job_id}").json()
    assert running["status"] == "running" and running["worker_id"] == "test-worker"
    refused = client.delete(f"/api/jobs/{job_id}")
    assert refused.status_code == 409 and error_locs(refused) == [["path", "job_id"]]
    assert client.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    with app.state.session_factory() as session:
        crud.finish_job(session, job_id, "test-worker", "cancelled")

    deleted = client.delete(f"/api/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.get(f"/api/jobs/{job_id}").status_code == 404


# --- trials and Pareto front -----------------------------------------------------------------


def _fake_trials(settings: Settings, study_name: str, n_done: int, running_at: int | None = None) -> None:
    """Finished trials 0..n_done-1 in the job's study (accuracy rising, costs falling), and
    optionally a running trial numbered ``running_at``."""
    study = optuna.create_study(
        study_name=study_name,
        storage=settings.resolved_database_url(),
        directions=["maximize", "minimize", "minimize"],
        load_if_exists=True,
    )
    for number in range(len(study.trials), n_done + (running_at is not None)):
        if number == running_at:
            study.ask()
            continue
        flash, sram = 100_000 - 1000 * number, 30_000 - 500 * number
        accuracy = 0.5 + 0.01 * number
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[accuracy, flash, sram],
                user_attrs={
                    "status": "complete",
                    "flash_bytes": flash,
                    "sram_bytes": sram,
                    "val_accuracy": accuracy,
                },
                constraints={"flash_bytes": flash / 131072 - 1, "sram_bytes": sram / 32768 - 1},
            )
        )


def test_trials_are_read_incrementally_with_after(client, settings):
    job = submit(client)
    url = f"/api/jobs/{job['id']}/trials"
    empty = client.get(url).json()
    assert empty == {"items": [], "next_after": -1, "has_more": False, "limit": 100}

    _fake_trials(settings, job["study_name"], n_done=3)
    first = client.get(url, params={"limit": 2}).json()
    assert [t["number"] for t in first["items"]] == [0, 1]
    assert first["next_after"] == 1 and first["has_more"]
    rest = client.get(url, params={"after": first["next_after"]}).json()
    assert [t["number"] for t in rest["items"]] == [2] and not rest["has_more"]
    assert rest["items"][0]["status"] == "complete" and rest["items"][0]["costs"]["flash_bytes"] == 98_000

    # A running trial is returned but the cursor stays before it, so it comes back finished.
    _fake_trials(settings, job["study_name"], n_done=5, running_at=3)
    polled = client.get(url, params={"after": rest["next_after"]}).json()
    assert [(t["number"], t["status"]) for t in polled["items"]] == [(3, "running"), (4, "complete"), (5, "complete")]
    assert polled["next_after"] == 2

    assert client.get(f"{url}/4").json()["number"] == 4
    missing = client.get(f"{url}/99")
    assert missing.status_code == 404 and "has no trial 99" in missing.json()["detail"]
    for params in ({"after": -2}, {"limit": 0}, {"limit": 1001}):
        assert client.get(url, params=params).status_code == 422


def test_pareto_front_of_a_job(client, settings):
    job = submit(client)
    url = f"/api/jobs/{job['id']}/pareto"
    before = client.get(url).json()
    assert before["pareto_front"] == [] and before["hypervolume"] == 0.0
    assert before["reference_point"] == {"accuracy": 0.0, "flash_bytes": 131072.0, "sram_bytes": 32768.0}

    _fake_trials(settings, job["study_name"], n_done=4)
    after = client.get(url).json()
    # Each later trial is better in every objective, so it alone is on the front.
    assert [t["number"] for t in after["pareto_front"]] == [3]
    assert 0.0 < after["hypervolume"] <= 1.0
    assert after["counts"]["complete"] == 4
    assert after["best_per_budget"]["best"]["number"] == 3
    assert len(after["hypervolume_history"]) == 4


# --- catalogue -------------------------------------------------------------------------------


def test_devices_list_and_register(client):
    listed = client.get("/api/devices").json()
    assert {d["name"] for d in listed} == {d.name for d in list_devices()}
    assert not any(d["custom"] for d in listed)

    board = get_device("stm32f446re").to_dict() | {"name": "test_f446_90mhz", "clock_hz": 90_000_000}
    created = client.post("/api/devices", json=board)
    assert created.status_code == 201 and created.json()["custom"]
    duplicate = client.post("/api/devices", json=board)
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    assert client.post("/api/devices", json=board | {"name": "stm32f446re"}).status_code == 409

    for bad, loc in (
        (board | {"name": "other", "clock_hz": -1}, ["body", "clock_hz"]),
        (board | {"name": "Bad Name"}, ["body", "name"]),
        ({k: v for k, v in board.items() if k != "sram_bytes"} | {"name": "other"}, ["body", "sram_bytes"]),
        (board | {"name": "other", "cycles_per_mac": {"conv2d": 1}}, ["body", "cycles_per_mac"]),
        ([1, 2], ["body"]),
    ):
        response = client.post("/api/devices", json=bad)
        assert response.status_code == 422, bad
        assert error_locs(response) == [loc]

    # A job may name the registered device; the job stores the whole device, so it runs anywhere.
    job = submit(client, device="test_f446_90mhz")
    assert job["spec"]["device"]["clock_hz"] == 90_000_000


def test_registered_devices_go_away_with_the_app(settings):
    board = get_device("stm32f446re").to_dict() | {"name": "test_short_lived"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/devices", json=board).status_code == 201
    assert "test_short_lived" not in {d.name for d in list_devices()}


def test_search_spaces_list_options_and_parameters(client):
    spaces = {s["name"]: s for s in client.get("/api/search-spaces").json()}
    assert {"sparse_cnn", "ds_cnn", "mbv2", "rnn"} <= set(spaces)
    cnn = spaces["sparse_cnn"]
    assert "channels" in {o["name"] for o in cnn["options"]}
    assert "digits" in cnn["fits_datasets"]
    assert cnn["parameters"]["n_conv"] == {"type": "int", "low": 1, "high": 4, "step": 1, "log": False, "choices": None}
    assert any(p["type"] == "categorical" for p in cnn["parameters"].values())
    assert spaces["rnn"]["example_input_shape"] is not None and len(spaces["rnn"]["example_input_shape"]) == 2


def test_datasets_list(client):
    datasets = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert datasets["digits"]["input_shape"] == [1, 8, 8]
    assert datasets["digits"]["needs_data_dir"] is False
    assert datasets["mnist"]["num_classes"] == 10


# --- OpenAPI and unexpected errors -------------------------------------------------------------


def test_openapi_schema_is_complete_with_examples(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    submit_op = paths["/api/jobs"]["post"]
    body = submit_op["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SearchJobSpec"}
    assert body["examples"]["digits"]["value"]["dataset"] == {"name": "digits"}
    assert {"201", "200", "409", "413", "422"} <= set(submit_op["responses"])
    components = schema["components"]["schemas"]
    assert "examples" in components["JobPublic"] and "examples" in components["TrialPublic"]
    assert {"SearchJobSpec", "DeviceCreate", "BudgetsSpec", "ErrorPublic"} <= set(components)
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in paths.items():
        for method, operation in operations.items():
            ok = [code for code in operation["responses"] if code.startswith("2")]
            assert ok, (method, path)
            if ok != ["204"]:
                assert "content" in operation["responses"][ok[0]], (method, path)


def test_an_unexpected_error_is_a_json_500(settings, caplog):
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaput")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; the service log has the details", "errors": []}
    assert "kaput" not in response.text
    assert any("unhandled error on GET /boom" in r.message for r in caplog.records)
