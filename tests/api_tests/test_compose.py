"""docker-compose.yml and the Dockerfile, checked as files (Docker does not run in CI).

The services exist and start the right commands, every ``SPARSE_NAS_*`` variable is a
real setting, the API's port is the settings' default, PostgreSQL is health-checked
before the API and the worker start, and the image installs the CPU build of torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_the_five_services_are_there(compose):
    assert set(compose["services"]) == {"postgres", "ray-head", "ray-worker", "api", "worker"}


def test_postgres_15_is_health_checked_and_gates_the_api_and_the_worker(compose):
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert "ray-head" in services["worker"]["depends_on"]


def test_commands(compose):
    services = compose["services"]
    head = _command(services["ray-head"])
    assert head.startswith("ray start --head") and "--block" in head and "--port=6379" in head
    worker = _command(services["ray-worker"])
    assert worker.startswith("ray start") and "--address=ray-head:6379" in worker and "--block" in worker
    assert _command(services["api"]).startswith("sparse-nas serve")
    assert _command(services["worker"]) == "sparse-nas worker"


def test_every_sparse_nas_variable_is_a_setting(compose):
    fields = {f"SPARSE_NAS_{name.upper()}" for name in Settings.model_fields}
    seen = set()
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key in environment:
            if key.startswith("SPARSE_NAS_"):
                assert key in fields, f"{name}: {key} is not a setting (valid: {sorted(fields)})"
                seen.add(key)
    assert {"SPARSE_NAS_DATABASE_URL", "SPARSE_NAS_API_TOKEN", "SPARSE_NAS_HOST", "SPARSE_NAS_PORT"} <= seen


def test_the_api_listens_on_the_settings_port_with_a_token_and_postgres(compose):
    defaults = Settings.model_fields
    api = compose["services"]["api"]
    env = api["environment"]
    assert env["SPARSE_NAS_HOST"] == "0.0.0.0"
    assert int(env["SPARSE_NAS_PORT"]) == defaults["port"].default
    assert api["ports"] == [f"{defaults['port'].default}:{defaults['port'].default}"]
    # 0.0.0.0 needs a token: it must come from the caller, never be baked in.
    assert re.fullmatch(r"\$\{SPARSE_NAS_API_TOKEN(:\?[^}]*)?\}", env["SPARSE_NAS_API_TOKEN"])
    for name in ("api", "worker"):
        url = compose["services"][name]["environment"]["SPARSE_NAS_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url, name


def test_the_worker_sends_ray_jobs_to_the_compose_ray_head(compose):
    services = compose["services"]
    host, port = services["worker"]["environment"]["SPARSE_NAS_RAY_ADDRESS"].split(":")
    assert host in services and _command(services[host]).startswith("ray start --head")
    assert f"--port={port}" in _command(services[host])
    assert f"--address={host}:{port}" in _command(services["ray-worker"])
    # The worker keeps the shared settings (database, token, directories) too.
    assert services["worker"]["environment"]["SPARSE_NAS_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_the_image_installs_the_package_with_cpu_torch(dockerfile):
    lines = [line.strip() for line in dockerfile.splitlines()]
    torch = [line for line in lines if "torch==2.13.0" in line]
    assert torch and "--index-url https://download.pytorch.org/whl/cpu" in torch[0]
    install = [line for line in lines if re.match(r"RUN pip install \.$", line)]
    assert install, "the package itself is installed"
    assert lines.index(torch[0]) < lines.index(install[0]), "CPU torch before the package pulls the default build"
    for package in ("api", "sparse_nas", "search_spaces", "hw_models"):
        assert f"COPY {package} ./{package}" in lines
