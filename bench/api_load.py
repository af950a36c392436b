"""Load benchmark of the REST API (issue 7 goals).

Against ``sparse-nas serve`` (uvicorn on 127.0.0.1, SQLite, its job worker process
running a long job the whole time):

* **polling**: 50 concurrent clients for 30 s, each alternating
  ``GET /api/jobs/{id}/trials?after=<its cursor>`` (following ``next_after`` as a
  dashboard does) and ``GET /api/jobs``. p50 and p99 latency per route; goal p99 <= 50 ms.
  Run twice: *paced* (each client reads both routes once per ``--interval-s``, from a
  random start and +-20% per interval, as independent dashboards poll) and *closed
  loop* (no pause at all: the server's saturation).
* **submissions**: 200 concurrent ``POST /api/jobs`` (a) with distinct
  ``Idempotency-Key`` s -> 200 jobs stored, (b) with one shared key -> exactly one
  stored and every response naming that job.

Clients are ``httpx.AsyncClient`` tasks in this process, on the same 2 cores as the
server: the latencies include the client's own share of the CPU.

Usage: .venv/bin/python bench/api_load.py [--clients 50] [--duration-s 30] [--interval-s 1.0]
       [--submissions 200] [--worker serve|separate]
Prints the figures and writes bench/results/api_load.json (``--worker separate``:
api_load_separate_worker.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
GOAL_P99_MS = 50.0
STARTUP_DEADLINE_S = 120.0

LONG_JOB: dict[str, Any] = {
    "name": "api-load-background",
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
    "budgets": {"max_sram_bytes": 32768, "max_flash_bytes": 131072},
    "strategy": "random",
    "n_trials": 500,
    "training": {"epochs": 1, "batch_size": 64},
    "execution": {"backend": "inprocess"},
}
"""Runs far longer than the benchmark: trials are written the whole time."""

SMALL_JOB: dict[str, Any] = LONG_JOB | {"name": "api-load-submit", "n_trials": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [1000 * s for s in seconds]
    return {
        "requests": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }


class Server:
    """``sparse-nas serve`` (or ``serve --no-worker`` plus ``sparse-nas worker``) in subprocesses."""

    def __init__(self, state_dir: Path, worker: str, token: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPARSE_NAS_")} | {
            "SPARSE_NAS_HOST": "127.0.0.1",
            "SPARSE_NAS_PORT": str(self.port),
            "SPARSE_NAS_API_TOKEN": token,
            "SPARSE_NAS_STATE_DIR": str(state_dir),
            "SPARSE_NAS_DATA_DIR": str(state_dir / "data"),
            "SPARSE_NAS_WORKER_POLL_S": "0.5",
        }
        self.log = open(state_dir / "server.log", "w")  # noqa: SIM115  closed in stop()
        serve = [sys.executable, "-m", "api.cli", "serve"] + (["--no-worker"] if worker == "separate" else [])
        self.processes = [self._spawn(serve)]
        self._wait_healthy()
        if worker == "separate":
            self.processes.append(self._spawn([sys.executable, "-m", "api.cli", "worker"]))

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise RuntimeError(f"the server exited with {self.processes[0].returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /healthz within {STARTUP_DEADLINE_S} s")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()


async def wait_for_trials(client: httpx.AsyncClient, job_id: str, minimum: int, deadline_s: float) -> int:
    """Poll until the job has ``minimum`` finished trials; returns how many it has."""
    deadline = time.monotonic() + deadline_s
    while True:
        page = (await client.get(f"/api/jobs/{job_id}/trials", params={"limit": 1000})).json()
        done = page["next_after"] + 1
        if done >= minimum:
            return done
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} has {done} finished trials after {deadline_s} s")
        await asyncio.sleep(0.5)


async def polling(
    client: httpx.AsyncClient, job_id: str, clients: int, duration_s: float, interval_s: float, seed: int = 0
) -> dict[str, Any]:
    """``clients`` tasks, each reading both GET routes once per ``interval_s`` for ``duration_s``.

    Paced clients start at random offsets and vary each interval by +-20% (seeded), as
    independent dashboards do; ``interval_s == 0`` is a closed loop (no pause at all).
    """
    latencies: dict[str, list[float]] = {"trials_first": [], "trials_after": [], "jobs_list": []}
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + duration_s

    async def one_client(rng: random.Random) -> None:
        after = -1
        if interval_s:
            await asyncio.sleep(rng.uniform(0, interval_s))
        while time.monotonic() < stop_at:
            started = time.monotonic()
            for route in ("trials_after", "jobs_list"):
                t0 = time.perf_counter()
                try:
                    if route == "trials_after":
                        response = await client.get(f"/api/jobs/{job_id}/trials", params={"after": after})
                    else:
                        response = await client.get("/api/jobs", params={"limit": 50})
                except httpx.TransportError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                elapsed = time.perf_counter() - t0
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    continue
                # A client's first read (after=-1) returns every trial so far; later ones, the new ones.
                latencies["trials_first" if route == "trials_after" and after == -1 else route].append(elapsed)
                if route == "trials_after":
                    after = response.json()["next_after"]
            if interval_s:
                pause = interval_s * rng.uniform(0.8, 1.2) - (time.monotonic() - started)
                await asyncio.sleep(max(0.0, pause))

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(random.Random(seed * 1000 + i)) for i in range(clients)))
    wall = time.perf_counter() - t0
    total = sum(len(v) for v in latencies.values())
    return {
        "clients": clients,
        "duration_s": wall,
        "interval_s": interval_s,
        "requests_per_s": total / wall,
        "errors": errors,
        "routes": {route: summary_ms(values) for route, values in latencies.items() if values},
    }


async def submissions(client: httpx.AsyncClient, n: int, shared_key: bool, tag: str) -> dict[str, Any]:
    """``n`` concurrent submissions; with ``shared_key`` all under one Idempotency-Key."""
    before = (await client.get("/api/jobs", params={"limit": 1})).json()["total"]

    async def submit(i: int) -> tuple[int | str, str | None, float]:
        key = f"{tag}-shared" if shared_key else f"{tag}-{i}"
        t0 = time.perf_counter()
        try:
            response = await client.post("/api/jobs", json=SMALL_JOB, headers={"Idempotency-Key": key})
        except httpx.TransportError as exc:
            return type(exc).__name__, None, time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        job_id = response.json().get("id") if response.status_code in (200, 201) else None
        return response.status_code, job_id, elapsed

    t0 = time.perf_counter()
    results = await asyncio.gather(*(submit(i) for i in range(n)))
    wall = time.perf_counter() - t0
    after = (await client.get("/api/jobs", params={"limit": 1})).json()["total"]
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "submissions": n,
        "shared_key": shared_key,
        "wall_s": wall,
        "statuses": statuses,
        "jobs_stored": after - before,
        "distinct_job_ids": len({job_id for _, job_id, _ in results if job_id}),
        "latency": summary_ms([elapsed for _, _, elapsed in results]),
    }


async def run(args: argparse.Namespace, server: Server, token: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.submissions + 10, max_keepalive_connections=args.submissions + 10)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=120
    ) as client:
        created = await client.post("/api/jobs", json=LONG_JOB)
        created.raise_for_status()
        job_id = created.json()["id"]
        trials_before = await wait_for_trials(client, job_id, minimum=3, deadline_s=300)
        paced = await polling(client, job_id, args.clients, args.duration_s, args.interval_s)
        closed = await polling(client, job_id, args.clients, args.duration_s, 0.0)
        job = (await client.get(f"/api/jobs/{job_id}")).json()
        distinct = await submissions(client, args.submissions, shared_key=False, tag=f"bench-{time.time_ns()}")
        shared = await submissions(client, args.submissions, shared_key=True, tag=f"bench-{time.time_ns()}")
        await client.post(f"/api/jobs/{job_id}/cancel")
    return {
        "background_job": {
            "trials_done_at_start": trials_before,
            "trials_done_after_polling": job["progress"]["trials_done"],
            "status_after_polling": job["status"],
        },
        "polling_paced": paced,
        "polling_closed_loop": closed,
        "submissions_distinct_keys": distinct,
        "submissions_shared_key": shared,
    }


def _print_polling(label: str, result: dict[str, Any]) -> None:
    print(
        f"{label}: {result['clients']} clients, {result['duration_s']:.1f} s, each polling every "
        f"{result['interval_s']} s (0: closed loop), "
        f"{result['requests_per_s']:.0f} req/s, errors {result['errors'] or 'none'}"
    )
    for route, s in result["routes"].items():
        print(
            f"  {route:<13} n={s['requests']:>6}  p50 {s['p50_ms']:6.1f} ms  p99 {s['p99_ms']:6.1f} ms  "
            f"max {s['max_ms']:6.1f} ms  (goal p99 <= {GOAL_P99_MS:.0f} ms: "
            f"{'met' if s['p99_ms'] <= GOAL_P99_MS else 'NOT met'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument(
        "--interval-s", type=float, default=1.0, help="a paced client reads both routes once per interval"
    )
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument(
        "--worker",
        choices=("serve", "separate"),
        default="serve",
        help="the job worker started by sparse-nas serve (the embedded default), or a separate "
        "sparse-nas worker beside serve --no-worker",
    )
    args = parser.parse_args()

    token = "bench-token"
    with tempfile.TemporaryDirectory(prefix="sparse-nas-api-load-") as tmp:
        server = Server(Path(tmp), args.worker, token)
        try:
            result = asyncio.run(run(args, server, token))
        finally:
            server.stop()

    _print_polling("polling, paced", result["polling_paced"])
    _print_polling("polling, closed loop", result["polling_closed_loop"])
    bg = result["background_job"]
    print(
        f"background job: {bg['trials_done_at_start']} trials before, {bg['trials_done_after_polling']} after "
        f"the polling ({bg['status_after_polling']})"
    )
    goals = {}
    for name, label, expected in (
        ("submissions_distinct_keys", "distinct keys", args.submissions),
        ("submissions_shared_key", "one shared key", 1),
    ):
        s = result[name]
        ok = s["jobs_stored"] == expected and s["distinct_job_ids"] == expected
        goals[f"{name}_stored_{expected}"] = ok
        print(
            f"{args.submissions} concurrent submissions, {label}: {s['jobs_stored']} stored, "
            f"{s['distinct_job_ids']} distinct ids, statuses {s['statuses']}, wall {s['wall_s']:.1f} s, "
            f"p50 {s['latency']['p50_ms']:.0f} ms p99 {s['latency']['p99_ms']:.0f} ms "
            f"(goal exactly {expected}: {'met' if ok else 'NOT met'})"
        )
    for mode in ("polling_paced", "polling_closed_loop"):
        for route in ("trials_after", "jobs_list"):
            s = result[mode]["routes"][route]
            goals[f"{mode}_{route}_p99_le_{GOAL_P99_MS:.0f}ms"] = s["p99_ms"] <= GOAL_P99_MS

    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "api_load",
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "settings": {
            "clients": args.clients,
            "duration_s": args.duration_s,
            "interval_s": args.interval_s,
            "submissions": args.submissions,
            "worker": args.worker,
            "database": "sqlite",
        },
        **result,
        "goals_met": goals,
    }
    path = RESULTS / ("api_load.json" if args.worker == "serve" else "api_load_separate_worker.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
