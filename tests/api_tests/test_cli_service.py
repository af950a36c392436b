"""`sparse-nas serve`, `submit` and `jobs` against a real uvicorn on 127.0.0.1.

The server is a subprocess (`python -m api.cli serve`) configured only through
SPARSE_NAS_* variables, on a free port, with a token; the client commands run in the
test process against it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from api.cli import main
from api.schemas import EXAMPLE_JOB_SPEC

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-test-token"
STARTUP_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.settings import get_settings

    for name in list(os.environ):
        if name.startswith("SPARSE_NAS_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SPARSE_NAS_")}
    env |= {
        "SPARSE_NAS_HOST": "127.0.0.1",
        "SPARSE_NAS_PORT": str(port),
        "SPARSE_NAS_API_TOKEN": TOKEN,
        "SPARSE_NAS_STATE_DIR": str(tmp_path / "state"),
        "SPARSE_NAS_DATA_DIR": str(tmp_path / "data"),
        "SPARSE_NAS_WORKER_POLL_S": "0.2",
        "SPARSE_NAS_HEARTBEAT_INTERVAL_S": "0.5",
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115  closed below, after the process
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not answer /healthz in time"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(EXAMPLE_JOB_SPEC))
    return path


@pytest.mark.slow
def test_submit_wait_and_list_against_a_running_server(server, spec_file, tmp_path, capsys):
    url, process = server
    assert main(["jobs", "--url", url]) == 2  # no token
    assert "HTTP 401" in capsys.readouterr().err

    code = main(["submit", str(spec_file), "--url", url, "--token", TOKEN, "--idempotency-key", "k1", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted (queued, 3 trials)" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("trial")] == ["0", "1", "2"]
    assert "succeeded: 3/3 trials" in out

    assert main(["submit", str(spec_file), "--url", url, "--token", TOKEN, "--idempotency-key", "k1"]) == 0
    assert "already submitted with this idempotency key" in capsys.readouterr().out

    assert main(["jobs", "--url", url, "--token", TOKEN]) == 0
    table = capsys.readouterr().out
    assert "succeeded" in table and "3/3" in table and "1 of 1 job(s)" in table
    assert main(["jobs", "--url", url, "--token", TOKEN, "--status", "queued", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(EXAMPLE_JOB_SPEC | {"budgets": {"max_sram_bytes": -1}}))
    assert main(["submit", str(bad), "--url", url, "--token", TOKEN]) == 2
    assert "body.budgets.max_sram_bytes: must be positive" in capsys.readouterr().err

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0  # graceful: uvicorn and the worker thread stop
    log = (tmp_path / "server.log").read_text()
    assert f"dashboard at {url}/" in log


def test_serve_refuses_a_public_host_without_a_token(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--port", str(_free_port())]) == 2
    assert "SPARSE_NAS_API_TOKEN" in capsys.readouterr().err


def test_client_commands_explain_an_unreachable_service(spec_file, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["jobs", "--url", url]) == 2
    assert f"cannot reach the service at {url}" in capsys.readouterr().err
    assert main(["submit", str(spec_file) + ".txt", "--url", url]) == 2
    assert "expected a .json, .yaml or .yml file" in capsys.readouterr().err
