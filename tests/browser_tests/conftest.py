"""A real service for the dashboard's browser tests, and headless Chromium to drive it.

One service per test session (the tests share it; they are one xdist group):

* ``sparse-nas serve --no-worker`` on a free 127.0.0.1 port, with a token, its state in
  a temporary directory; a job worker (``python -m api.worker``) in its own process.
* A real small job (digits, random strategy, :data:`SMALL_TRIALS` trials, 1 epoch,
  in-process), and a job that fails at run time (MNIST without its files).
* A job of :data:`BIG_TRIALS` trials, written into its study with the attributes the
  engine writes (``sparse_nas/search/records.py``) from random points of its space,
  costed exactly; accuracies are synthetic (nothing is trained). Writing it takes
  about half a minute, so it is written while the worker runs the small job.
* After the worker stops: a queued job and one cancelled before it ran (both empty).

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; the token is put in
localStorage before the page loads. Screenshots go to the session's temporary directory
and, with ``SPARSE_NAS_SAVE_SCREENSHOTS=1``, the job page's to docs/dashboard.png.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKEN = "browser-test-token"
TOKEN_KEY = "sparse-nas.token"
SMALL_TRIALS = 5
BIG_TRIALS = 1000
STARTUP_DEADLINE_S = 60.0
JOBS_DEADLINE_S = 240.0
SCREENSHOTS_ENV = "SPARSE_NAS_SAVE_SCREENSHOTS"

SMALL_SPEC: dict[str, Any] = {
    "name": "digits-small",
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
    "budgets": {"max_sram_bytes": 32768, "max_flash_bytes": 131072},
    "objectives": ["accuracy", "flash_bytes", "sram_bytes"],
    "strategy": "random",
    "n_trials": SMALL_TRIALS,
    # One epoch of small batches: a few seconds per trial, and accuracies well above chance.
    "training": {"epochs": 1, "batch_size": 16},
    "execution": {"backend": "inprocess"},
}
# SRAM budget tight enough that part of the random points break it (infeasible trials).
BIG_SPEC: dict[str, Any] = SMALL_SPEC | {
    "name": "big-study",
    "n_trials": BIG_TRIALS,
    "budgets": {"max_sram_bytes": 24576, "max_flash_bytes": 131072},
}
FAILING_SPEC: dict[str, Any] = SMALL_SPEC | {"name": "mnist-without-files", "dataset": {"name": "mnist"}, "n_trials": 2}


@dataclass
class Service:
    """The running service and the jobs the tests look at."""

    url: str
    state_dir: Path
    screenshots: Path
    env: dict[str, str]
    """The service's environment (SPARSE_NAS_* settings), for another worker."""
    jobs: dict[str, str] = field(default_factory=dict)
    """Job ids by role: small, failed, big, queued, cancelled."""

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def all_trials(self, job_id: str) -> list[dict[str, Any]]:
        trials, after = [], -1
        while True:
            page = self.get(f"/api/jobs/{job_id}/trials?after={after}&limit=1000")
            trials += page["items"]
            if not page["has_more"]:
                return trials
            after = page["items"][-1]["number"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_env(state: Path, port: int) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SPARSE_NAS_")}
    return env | {
        "SPARSE_NAS_HOST": "127.0.0.1",
        "SPARSE_NAS_PORT": str(port),
        "SPARSE_NAS_API_TOKEN": TOKEN,
        "SPARSE_NAS_STATE_DIR": str(state / "state"),
        "SPARSE_NAS_DATA_DIR": str(state / "data"),
        "SPARSE_NAS_WORKER_POLL_S": "0.2",
        "SPARSE_NAS_HEARTBEAT_INTERVAL_S": "0.5",
        # The big job is held by this test process, which stamps no heartbeat.
        "SPARSE_NAS_STALE_AFTER_S": "3600",
        # One torch thread: the suite shares two cores.
        "OMP_NUM_THREADS": "1",
    }


def _wait_until(predicate, deadline_s: float, what: str, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def write_big_study(
    database_url: str, study_name: str, spec_dict: dict[str, Any], n_trials: int, seed: int = 0
) -> float | None:
    """Write ``n_trials`` finished trials into a job's study as the engine stores them.

    Points are random points of the job's space, costed exactly on its device; a point
    over a limit is ``infeasible`` (COMPLETE, accuracy 0.0, reason), the others are
    ``complete`` (one in eight ``stopped``, PRUNED, and one in forty ``failed``) with a
    synthetic accuracy that grows with the network's MACs. Returns the best accuracy
    of a complete trial (None when none is).
    """
    import numpy as np
    import optuna
    from optuna.trial import TrialState, create_trial

    from sparse_nas.search import open_storage
    from sparse_nas.search.costs import constraint_values, cost_points, infeasible_reason
    from sparse_nas.search.records import REASON_ATTR, SPEC_ATTR, STATUS_ATTR, objective_values
    from sparse_nas.search.results import random_points
    from sparse_nas.spec import SearchJobSpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SearchJobSpec.model_validate(spec_dict)
    space = spec.build_search_space()
    distributions = space.distributions()
    points = random_points(distributions, n_trials, seed)
    costs = cost_points(space, points, spec.device_spec(), spec.runtime)
    limits = spec.limits()
    rng = np.random.default_rng(seed)
    study = optuna.create_study(storage=open_storage(database_url), study_name=study_name, directions=spec.directions())
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    trials: list[optuna.trial.FrozenTrial] = []
    best: float | None = None
    for i, params in enumerate(points):
        point_costs = {metric: float(values[i]) for metric, values in costs.items()}
        attrs: dict[str, Any] = dict(point_costs)
        reason = infeasible_reason(point_costs, limits)
        accuracy = float(
            np.clip(0.5 + 0.45 * (1 - math.exp(-point_costs["macs"] / 150_000)) + rng.normal(0, 0.03), 0.1, 0.995)
        )
        curve = {epoch: accuracy * (0.8 + 0.1 * epoch) for epoch in range(3)}
        state, values, intermediate = TrialState.COMPLETE, None, None
        if reason is not None:
            attrs |= {STATUS_ATTR: "infeasible", REASON_ATTR: reason}
            values = objective_values(spec.objectives, 0.0, point_costs)
        elif i % 40 == 39:
            attrs |= {STATUS_ATTR: "failed", REASON_ATTR: "training diverged: loss 1e+09 exceeds 10x its first value"}
            state = TrialState.FAIL
        elif i % 8 == 7:
            attrs |= {STATUS_ATTR: "stopped", REASON_ATTR: "stopped at epoch 1: below the rung's top third"}
            attrs |= {"val_accuracy": curve[0] * 0.9, "epochs_completed": 1}
            state, intermediate = TrialState.PRUNED, {0: curve[0] * 0.9}
        else:
            attrs |= {STATUS_ATTR: "complete", "val_accuracy": curve[2], "test_accuracy": curve[2] - 0.01}
            attrs |= {"epochs_completed": 3, "train_seconds": 1.0}
            values, intermediate = objective_values(spec.objectives, curve[2], point_costs), curve
            best = curve[2] if best is None else max(best, curve[2])
        trials.append(
            create_trial(
                state=state,
                values=values,
                params=dict(params),
                distributions=distributions,
                user_attrs=attrs,
                constraints=constraint_values(point_costs, limits),
                intermediate_values=intermediate,
            )
        )
    study.add_trials(trials)
    return best


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from api import crud
    from api.db import make_engine, make_session_factory, upgrade
    from sparse_nas.search import open_storage
    from sparse_nas.spec import SearchJobSpec

    root = tmp_path_factory.mktemp("dashboard")
    port = _free_port()
    env = _service_env(root, port)
    url = f"http://127.0.0.1:{port}"
    server_log = open(root / "server.log", "w")  # noqa: SIM115  closed at teardown
    worker_log = open(root / "worker.log", "w")  # noqa: SIM115  closed at teardown
    server: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    svc = Service(url=url, state_dir=root / "state", screenshots=root / "screenshots", env=env)
    svc.screenshots.mkdir()
    try:
        # The big job comes first: the service tables are migrated here, the job queued and
        # claimed by this process (so no worker takes it), and its study written in a thread
        # while the server starts and the worker runs the other jobs.
        (root / "state").mkdir()
        database_url = f"sqlite:///{(root / 'state' / 'sparse-nas.db').resolve()}"
        upgrade(database_url)
        open_storage(database_url).engine.dispose()
        engine = make_engine(database_url)
        sessions = make_session_factory(engine)
        with sessions() as session:
            big, _ = crud.create_job(session, SearchJobSpec.model_validate(BIG_SPEC))
            claimed = crud.claim_next_job(session, "browser-tests", stale_after_s=3600)
            assert claimed is not None and claimed.id == big.id
            svc.jobs["big"] = big.id
            big_study = big.study_name
        seeded: dict[str, Any] = {}

        def seed() -> None:
            try:
                seeded["best"] = write_big_study(database_url, big_study, BIG_SPEC, BIG_TRIALS)
            except BaseException as exc:  # re-raised in the fixture
                seeded["error"] = exc

        seeding = threading.Thread(target=seed, name="seed-big-study", daemon=True)
        seeding.start()

        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--no-worker"],
            cwd=ROOT,
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            assert server.poll() is None, (root / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        _wait_until(healthy, STARTUP_DEADLINE_S, "the server's /healthz", poll_s=0.1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "api.worker", "--worker-id", "browser-test-worker"],
            cwd=ROOT,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        for role, spec in (("small", SMALL_SPEC), ("failed", FAILING_SPEC)):
            status, body = svc.request("POST", "/api/jobs", spec)
            assert status == 201, body
            svc.jobs[role] = body["id"]

        def finished() -> bool:
            assert worker.poll() is None, (root / "worker.log").read_text()
            states = [svc.get(f"/api/jobs/{svc.jobs[r]}")["status"] for r in ("small", "failed")]
            return all(s in ("succeeded", "failed", "cancelled") for s in states)

        _wait_until(finished, JOBS_DEADLINE_S, "the small and the failing job to finish", poll_s=0.5)
        assert svc.get(f"/api/jobs/{svc.jobs['small']}")["status"] == "succeeded", (root / "worker.log").read_text()
        assert svc.get(f"/api/jobs/{svc.jobs['failed']}")["status"] == "failed", (root / "worker.log").read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0

        seeding.join(JOBS_DEADLINE_S)
        assert not seeding.is_alive(), "writing the big study took too long"
        if "error" in seeded:
            raise seeded["error"]
        with sessions() as session:
            crud.update_progress(session, big.id, "browser-tests", trials_done=BIG_TRIALS, best_accuracy=seeded["best"])
            crud.finish_job(session, big.id, "browser-tests", "succeeded")
        engine.dispose()

        # No worker runs from here on: these stay as they are.
        status, body = svc.request("POST", "/api/jobs", SMALL_SPEC | {"name": "waiting-in-queue", "n_trials": 3})
        assert status == 201, body
        svc.jobs["queued"] = body["id"]
        status, body = svc.request("POST", "/api/jobs", SMALL_SPEC | {"name": "cancelled-early", "n_trials": 3})
        assert status == 201, body
        svc.jobs["cancelled"] = body["id"]
        assert svc.request("POST", f"/api/jobs/{body['id']}/cancel")[1]["status"] == "cancelled"
        yield svc
    finally:
        for process in (worker, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        server_log.close()
        worker_log.close()


# --- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Page:
    """A Playwright page on the service, with what its console reported."""

    page: Any
    service: Service
    console_errors: list[str]

    def goto(self, fragment: str = "#/jobs") -> None:
        self.page.goto(f"{self.service.url}/{fragment}")

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        path = self.service.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


def _new_page(browser: Any, service: Service, token: str | None) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    if token is not None:
        context.add_init_script(f"window.localStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(token)});")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.set_default_timeout(30_000)
    try:
        yield Page(page, service, errors)
    finally:
        context.close()


@pytest.fixture
def dashboard(browser: Any, service: Service) -> Iterator[Page]:
    """A fresh browser context with the service's token in localStorage."""
    yield from _new_page(browser, service, TOKEN)


@pytest.fixture
def anonymous_dashboard(browser: Any, service: Service) -> Iterator[Page]:
    """A fresh browser context without a token."""
    yield from _new_page(browser, service, None)


def publish_screenshot(path: Path, name: str) -> None:
    """Copy a screenshot into docs/ when ``SPARSE_NAS_SAVE_SCREENSHOTS=1``."""
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        shutil.copyfile(path, ROOT / "docs" / name)
