"""``sparse-nas serve``: the API on uvicorn plus one job worker in a child process.

This is the embedded default: one command, a SQLite file (or any database URL), trials
run in-process or on Ray as each job's spec says. The worker is its own process
(``python -m api.worker``) at a lower CPU priority, so training never holds the API's
GIL: requests are answered at the same latency whether or not a job runs. It gets the
same settings through the environment and stops when this process dies.

SIGINT or SIGTERM stops uvicorn gracefully (requests in flight finish) and the worker
(its trial in flight finishes and is stored, its job goes back to the queue). A worker
still busy after :data:`SHUTDOWN_GRACE_S` is killed; its job is then taken over by the
next start once the heartbeat is stale, and its study resumed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from types import FrameType

import uvicorn

from api.app import check_bind, create_app
from api.db.migrate import upgrade
from api.settings import Settings
from sparse_nas.search import open_storage

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 30.0
"""How long shutdown waits for the worker to finish its trial in flight before killing it."""

WORKER_NICENESS = 10
"""How much lower the worker's CPU priority is than the API's."""


def dashboard_url(settings: Settings) -> str:
    """Where a browser finds the service (``http://host:port/``)."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}/"


def start_worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    """``python -m api.worker`` with ``settings`` in its environment, stopping when we die.

    Its output goes to ours (one log for the service). It runs in its own session, so a
    Ctrl-C at the terminal reaches only us: we then stop it once, gracefully.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("SPARSE_NAS_")}
    env |= settings.as_environment()
    command = [
        sys.executable,
        "-m",
        "api.worker",
        "--nice",
        str(WORKER_NICENESS),
        "--parent-pid",
        str(os.getpid()),
    ]
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop_child(process: subprocess.Popen[bytes], grace_s: float = SHUTDOWN_GRACE_S, *, signal_it: bool = True) -> None:
    """Stop a child gracefully: SIGTERM (unless ``signal_it`` is False: it was already
    signalled, e.g. by the terminal's Ctrl-C), wait up to ``grace_s``, then kill it."""
    if signal_it and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("%s is still busy after %.0f s; killing it", " ".join(map(str, process.args)), grace_s)
        process.kill()
        process.wait()


def serve(settings: Settings, *, with_worker: bool = True) -> int:
    """Migrate, then serve the API (and run one worker) until SIGINT or SIGTERM.

    Args:
        settings: Host, port, token, database and directories.
        with_worker: Also run a job worker (a child process; ``False``: API only, as in
            docker-compose where workers are their own service).

    Returns:
        The exit status: 0 after a clean shutdown, 1 when the server could not start.

    Raises:
        InsecureBindError: The host is not loopback and no token is set.
    """
    check_bind(settings)
    url = settings.resolved_database_url()
    upgrade(url)
    # Optuna's tables too, before the worker and the app both reach for them.
    open_storage(url).engine.dispose()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))
    worker = start_worker_process(settings) if with_worker else None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal first, then restores this handler and raises the
        # signal again: the worker is stopped below, not by the default action.
        pass

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"sparse-nas: dashboard at {dashboard_url(settings)} (API under /api, docs at /docs)", flush=True)
    try:
        server.run()
    finally:
        if worker is not None:
            # A job still in a trial after the grace period is taken over at the next start.
            stop_child(worker)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1
