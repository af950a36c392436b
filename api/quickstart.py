"""``sparse-nas quickstart SPEC``: start the service, run one job on it, show its front.

The README's first command. It starts ``sparse-nas serve`` (API plus job worker,
SQLite and a private local Ray by default) as a child process logging to
``state_dir/service.log``, submits the spec, prints each trial as it finishes, then the
Pareto front and the dashboard's address, and keeps the service up until Ctrl-C (or
exits at once with ``exit_when_done``).

Running it again does not start the search over: the job is submitted with an
idempotency key made from the spec, so the same spec finds the same job. A finished
job is shown as it is, a cancelled or failed one is resumed, and one cut off by a
previous Ctrl-C was handed back to the queue and continues with its trials kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from api.client import ServiceClient, read_spec_document
from api.console import front_table, job_summary, trial_line
from api.serve import SHUTDOWN_GRACE_S, dashboard_url, stop_child
from api.settings import Settings

READY_TIMEOUT_S = 120.0
"""How long the service may take to start (migrations, first imports)."""

POLL_S = 1.0
"""How often the job's progress is read."""


def idempotency_key(spec: dict[str, Any]) -> str:
    """``quickstart-<hash of the spec>``: the same spec maps to the same job."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"quickstart-{digest[:24]}"


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port the OS says is free on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_service(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``sparse-nas serve`` with ``settings`` in its environment, logging to ``log_path``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPARSE_NAS_")}
    env |= settings.as_environment()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def quickstart(settings: Settings, spec_path: Path, *, exit_when_done: bool = False) -> int:
    """Start the service, run the job of ``spec_path`` on it and print its Pareto front.

    Returns:
        0 when the job succeeded (and, unless ``exit_when_done``, the service was then
        stopped with Ctrl-C), 1 when it failed or was cancelled.

    Raises:
        SpecFileError: The spec file cannot be read.
        ServiceClientError: The service did not start, or refused the spec (the message
            lists its per-field errors).
    """
    spec = read_spec_document(spec_path)
    if not port_is_free(settings.host, settings.port):
        port = free_port(settings.host)
        print(f"port {settings.port} is in use; the service takes port {port}")
        settings = settings.model_copy(update={"port": port})
    log_path = settings.state_dir / "service.log"
    url = dashboard_url(settings)
    print(f"starting the service at {url} (SQLite and artifacts in {settings.state_dir}/, log {log_path})")
    server = start_service(settings, log_path)
    try:
        client = ServiceClient(url, settings.api_token)
        client.wait_ready(READY_TIMEOUT_S, is_alive=lambda: server.poll() is None)
        job, created = client.submit(spec, idempotency_key(spec))
        if job["status"] in ("cancelled", "failed"):
            job = client.request("POST", f"/api/jobs/{job['id']}/resume")[1]
            how = "resumed"
        else:
            how = "submitted" if created else "found (submitted before with this spec)"
        n_trials = job["progress"]["n_trials"]
        print(f"job {job['id']} {how}: {job['name'] or 'unnamed'}, {n_trials} trials")
        print(f"watch it live at {url}#/jobs/{job['id']}")
        done = client.follow(job["id"], POLL_S, lambda trial: print(trial_line(trial), flush=True))
        print(job_summary(done))
        print()
        print(front_table(client.pareto(job["id"])))
        print()
        print(f"dashboard: {url}#/jobs/{job['id']}")
        if exit_when_done:
            return 0 if done["status"] == "succeeded" else 1
        print("the service keeps running (submit more with `sparse-nas submit SPEC.yaml`); Ctrl-C stops it")
        server.wait()
        return 0 if done["status"] == "succeeded" else 1
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the service too: it is shutting down by itself.
        print("\nstopping the service (the trial in flight is stored; the job resumes at the next start)")
        stop_child(server, SHUTDOWN_GRACE_S + 10, signal_it=False)
        return 130
    finally:
        if server.poll() is None:
            stop_child(server, SHUTDOWN_GRACE_S + 10)
