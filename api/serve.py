"""``sparse-nas serve``: the API on uvicorn plus one job worker in a background thread.

This is the embedded default: one process, a SQLite file (or any database URL), trials
run in-process or on Ray as each job's spec says. The worker claims queued jobs and
runs them while uvicorn answers requests. SIGINT or SIGTERM stops uvicorn gracefully
(requests in flight finish) and tells the worker to take no new job; a job still
running after :data:`SHUTDOWN_GRACE_S` is left to the next start, which takes it over
once its heartbeat is stale and resumes its study.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

import uvicorn

from api.app import check_bind, create_app
from api.db.migrate import upgrade
from api.settings import Settings
from sparse_nas.search import open_storage

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
"""How long shutdown waits for the worker thread to end its current job."""

GIL_SWITCH_INTERVAL_S = 0.001
"""How soon a thread holding the GIL hands it over (Python's default: 5 ms)."""

WORKER_NICENESS = 10
"""How much lower the worker thread's CPU priority is than the API's (Linux: per thread)."""


def dashboard_url(settings: Settings) -> str:
    """Where a browser finds the service (``http://host:port/``)."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}/"


def _run_worker(settings: Settings, stop: threading.Event) -> None:
    from api.worker import JobWorker

    # Requests come first: training takes the CPU the API leaves (all of it when idle).
    # On Linux a thread's nice value is its own, and threads it starts (torch's) inherit it.
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        except OSError as exc:
            logger.info("cannot lower the worker thread's priority: %s", exc)
    worker = JobWorker(settings)
    try:
        worker.run_forever(stop)
    finally:
        worker.close()


def serve(settings: Settings, *, with_worker: bool = True) -> int:
    """Migrate, then serve the API (and run one worker) until SIGINT or SIGTERM.

    Args:
        settings: Host, port, token, database and directories.
        with_worker: Also run a job worker in this process (``False``: API only, as in
            docker-compose where workers are their own service).

    Returns:
        The exit status: 0 after a clean shutdown, 1 when the server could not start.

    Raises:
        InsecureBindError: The host is not loopback and no token is set.
    """
    check_bind(settings)
    if with_worker:
        # The worker's training loop holds the GIL between torch ops, and a request waits
        # for it at each of its database calls. With a shorter interval and a lower
        # priority for the worker thread, bench/api_load.py measured requests while a
        # job trains at about 2/3 of their tail latency and 1.6x the throughput.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    url = settings.resolved_database_url()
    upgrade(url)
    # Optuna's tables too, before the worker thread and the app both reach for them.
    open_storage(url).engine.dispose()
    app = create_app(settings)
    stop = threading.Event()
    worker_thread: threading.Thread | None = None
    if with_worker:
        worker_thread = threading.Thread(target=_run_worker, args=(settings, stop), name="job-worker", daemon=True)
        worker_thread.start()
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal first, then restores this handler and raises the
        # signal again: stop the worker instead of letting the default action kill us.
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"sparse-nas: dashboard at {dashboard_url(settings)} (API under /api, docs at /docs)", flush=True)
    try:
        server.run()
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if worker_thread is not None:
            worker_thread.join(SHUTDOWN_GRACE_S)
            if worker_thread.is_alive():
                logger.warning(
                    "the job worker is still running a job after %.0f s; it resumes at the next start",
                    SHUTDOWN_GRACE_S,
                )
    return 0 if server.started else 1
