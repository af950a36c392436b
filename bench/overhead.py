"""Search-loop overhead at the quickstart's trial size, and the speed-up of 2 concurrent Ray trials.

Issue goals:

* the share of a job's trial-loop wall time spent outside training and evaluation
  (sampling, database, Ray) at the quickstart's trial size: at most 5%;
* 2 concurrent trials (Ray, ``cpus_per_trial: 1``) at least 1.8x as fast as 1.

Every job is ``examples/quickstart.yaml`` (digits, ``sparse_cnn`` on the STM32F446RE,
6 epochs at batch 64) with only the strategy, the trial count and the execution
changed. To compare backends on the same work, the fixed-point jobs run ``--points``
feasible points (the first of a seeded random screen of the space) enqueued in the
study before the engine starts, with ``strategy: random`` (an enqueued point bypasses
the sampler). The ``mobo`` jobs run the quickstart as it is (its own 24 points, 8
initial), to include the default strategy's suggestion cost.

Measured per job:

* ``loop_seconds``: from the first trial's start (when the driver asks for it) to the
  last one's completion (when it is told), read from the study; one-off start-up is
  outside it and reported apart: loading the dataset, starting the executor (a private
  local Ray for the Ray backend) and warming each process that will train (the driver
  for the in-process backend, one Ray task per CPU otherwise): importing the trial
  runner and building one AdamW optimiser, whose first construction in a process
  imports ``torch._dynamo`` (about 3.5 s, measured as the first trial's extra
  ``worker_seconds`` before this warm-up was added).
* overhead share ``1 - sum(train_seconds) / loop_seconds`` (``train_seconds``: the
  trainer's wall time, per-epoch validation included), broken down into the driver's
  sampling (``suggest_seconds``), its exact costing and storing (``driver_seconds -
  suggest_seconds``), the worker's work around training (``worker_seconds -
  train_seconds``: building the model, test evaluation, costing the trained masks) and
  the remainder (telling, saving weights, the database, Ray transport).
* speed-up: median ``loop_seconds`` of the concurrency-1 Ray jobs over that of the
  concurrency-2 ones, on the same points (``--repeats`` jobs each, interleaved).

Usage: ``.venv/bin/python bench/overhead.py [--quick] [--points 12] [--repeats 3] [--skip-mobo]``
Writes ``bench/results/overhead.json`` (``overhead_quick.json`` with ``--quick``: 4
points, 1 repeat, 2 epochs, mobo with 8 trials).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _search_jobs import RESULTS, median, quiet, rounded, run_job, source_digest, total, trial_timings

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
OVERHEAD_GOAL = 0.05
SPEEDUP_GOAL = 1.8
POINTS_SEED = 0
SCREEN_POINTS = 2048
WARMUP_SLEEP_SECONDS = 1.0
"""Each warm-up task holds its CPU this long, so that the tasks land on different workers."""


def quickstart_document() -> dict[str, Any]:
    from sparse_nas.spec import SearchJobSpec

    return SearchJobSpec.from_file(QUICKSTART).to_dict()


def job_spec(base: Mapping[str, Any], *, strategy: str, n_trials: int, initial: int, execution: dict[str, Any]) -> Any:
    """The quickstart with another strategy, trial budget and execution."""
    from sparse_nas.spec import SearchJobSpec

    return SearchJobSpec.model_validate(
        {**base, "strategy": strategy, "n_trials": n_trials, "initial_trials": initial, "execution": execution}
    )


def fixed_points(spec: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` points within the job's limits of a seeded random screen of its space."""
    from sparse_nas.search.costs import cost_points, feasible_mask
    from sparse_nas.search.results import random_points

    space = spec.build_search_space()
    points = random_points(space.distributions(), SCREEN_POINTS, POINTS_SEED)
    mask = feasible_mask(cost_points(space, points, spec.device_spec(), spec.runtime), spec.limits())
    chosen = [p for p, ok in zip(points, mask, strict=True) if ok][:n]
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} of {SCREEN_POINTS} screened points are feasible, {n} wanted")
    return chosen


def _warm_worker(seconds: float) -> int:
    # What a cold process's first trial would load: the trial runner, and torch._dynamo,
    # which torch imports on the first optimiser construction. Then hold the CPU so
    # that the other warm-up tasks go to other workers.
    import torch

    import sparse_nas.search.trial_runner  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    time.sleep(seconds)
    return os.getpid()


def warm_ray_workers() -> list[int]:
    """Start and warm one Ray worker per cluster CPU; their process ids."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    remote = ray.remote(num_cpus=1)(_warm_worker)
    return ray.get([remote.remote(WARMUP_SLEEP_SECONDS) for _ in range(cpus)])


def run_measured(
    label: str, spec: Any, *, enqueue: Sequence[Mapping[str, Any]] = (), repeat: int = 0
) -> dict[str, Any]:
    """One job with its start-up timed apart from its trial loop; timings and the overhead breakdown."""
    from sparse_nas.datasets import load_dataset
    from sparse_nas.search import InProcessExecutor, RayExecutor

    execution = spec.execution
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="overhead-") as directory:
        start = time.perf_counter()
        splits = load_dataset(spec.dataset_config(), None)
        space = spec.build_search_space()
        dataset_seconds = time.perf_counter() - start
        start = time.perf_counter()
        warm_pids: list[int] = []
        if execution.backend == "ray":
            executor: Any = RayExecutor(
                space, splits, concurrency=execution.concurrency, cpus_per_trial=execution.cpus_per_trial
            )
            executor_seconds = time.perf_counter() - start
            start = time.perf_counter()
            warm_pids = warm_ray_workers()
            warmup_seconds = time.perf_counter() - start
        else:
            executor = InProcessExecutor(space, splits)
            executor_seconds = time.perf_counter() - start
            start = time.perf_counter()
            warm_pids = [_warm_worker(0.0)]
            warmup_seconds = time.perf_counter() - start
        try:
            job = run_job(spec, directory, data_dir=None, executor=executor, enqueue=enqueue)
        finally:
            start = time.perf_counter()
            executor.close()
            close_seconds = time.perf_counter() - start
    rows = trial_timings(job.results)
    loop = job.loop_seconds
    train, worker = total(rows, "train_seconds"), total(rows, "worker_seconds")
    suggest, driver = total(rows, "suggest_seconds"), total(rows, "driver_seconds")
    parts = {
        "sampling (suggest_seconds)": suggest,
        "costing and storing the point (driver_seconds - suggest_seconds)": driver - suggest,
        "worker around training: build, test eval, costing (worker_seconds - train_seconds)": worker - train,
        "rest: tell, weights, database, transport (loop - driver - worker)": loop - driver - worker,
    }
    concurrency = execution.concurrency if execution.backend == "ray" else 1
    return {
        "label": label,
        "repeat": repeat,
        "strategy": spec.strategy,
        "backend": execution.backend,
        "concurrency": concurrency,
        "n_trials": spec.n_trials,
        "enqueued_points": len(enqueue),
        "counts": job.results.counts,
        "startup_seconds": {
            "dataset_and_space": dataset_seconds,
            "executor_start": executor_seconds,
            "process_warmup": warmup_seconds,
            "executor_close": close_seconds,
        },
        "warm_worker_pids": warm_pids,
        "run_seconds": job.run_seconds,
        "loop_seconds": loop,
        "sum_train_seconds": train,
        "sum_worker_seconds": worker,
        "sum_suggest_seconds": suggest,
        "sum_driver_seconds": driver,
        # Only meaningful when trials run one at a time (trial-seconds exceed the wall time otherwise).
        "overhead_share": 1.0 - train / loop if concurrency == 1 and loop > 0 else None,
        "outside_worker_share": 1.0 - worker / loop if concurrency == 1 and loop > 0 else None,
        "breakdown_share": {k: v / loop for k, v in parts.items()} if concurrency == 1 and loop > 0 else None,
        "median_train_seconds": median([r["train_seconds"] for r in rows if r["train_seconds"]]),
        "max_suggest_seconds": max((r["suggest_seconds"] or 0.0 for r in rows), default=None),
        "worker_pids": sorted({r["worker_pid"] for r in rows if r["worker_pid"]}),
        "trials": rows,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def _print_job(job: Mapping[str, Any]) -> None:
    startup = job["startup_seconds"]
    share = job["overhead_share"]
    print(
        f"{job['label']:<22} repeat {job['repeat']}  loop {job['loop_seconds']:6.1f}s"
        f"  train {job['sum_train_seconds']:6.1f}s"
        f"  worker {job['sum_worker_seconds']:6.1f}s  driver {job['sum_driver_seconds']:5.2f}s"
        + (f"  overhead {100 * share:5.1f}%" if share is not None else "")
        + f"  | start-up: data {startup['dataset_and_space']:.2f}s executor {startup['executor_start']:.2f}s"
        f" warm-up {startup['process_warmup']:.2f}s  | statuses {_counts(job['counts'])}"
        f"  load {job['load_average_before'][0]:.2f}",
        flush=True,
    )


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


def summarise(jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median figures per configuration, the speed-up and the goals."""
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for job in jobs:
        by_label.setdefault(job["label"], []).append(job)
    configs = {}
    for label, runs in by_label.items():
        single = runs[0]["concurrency"] == 1
        configs[label] = {
            "repeats": len(runs),
            "loop_seconds": [rounded(r["loop_seconds"], 2) for r in runs],
            "median_loop_seconds": median([r["loop_seconds"] for r in runs]),
            "median_sum_train_seconds": median([r["sum_train_seconds"] for r in runs]),
            "median_train_seconds_per_trial": median([r["median_train_seconds"] for r in runs]),
            "overhead_share": [r["overhead_share"] for r in runs] if single else None,
            "median_overhead_share": median([r["overhead_share"] for r in runs]) if single else None,
            "median_outside_worker_share": median([r["outside_worker_share"] for r in runs]) if single else None,
            "median_breakdown_share": (
                {k: median([r["breakdown_share"][k] for r in runs]) for k in runs[0]["breakdown_share"]}
                if single
                else None
            ),
            "median_startup_seconds": {
                k: median([r["startup_seconds"][k] for r in runs]) for k in runs[0]["startup_seconds"]
            },
            "max_suggest_seconds": max(r["max_suggest_seconds"] or 0.0 for r in runs),
            "worker_pids_per_run": [r["worker_pids"] for r in runs],
        }
    out: dict[str, Any] = {"configs": configs, "goals": {}}
    for label, config in configs.items():
        if config["median_overhead_share"] is not None:
            out["goals"][f"overhead share <= 5%: {label}"] = config["median_overhead_share"] <= OVERHEAD_GOAL
    c1, c2 = configs.get("ray c1 fixed"), configs.get("ray c2 fixed")
    if c1 and c2:
        speedup = c1["median_loop_seconds"] / c2["median_loop_seconds"]
        out["speedup_c2_over_c1"] = speedup
        out["speedup_per_repeat"] = [
            a / b for a, b in zip(c1["loop_seconds"], c2["loop_seconds"], strict=False) if a and b
        ]
        out["goals"]["speed-up of 2 concurrent trials >= 1.8x"] = speedup >= SPEEDUP_GOAL
    return out


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def format_summary(summary: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    lines = [
        f"overhead at the quickstart's trial size ({settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"digits, sparse_cnn); machine: {os.cpu_count()} CPU cores (2 concurrent trials use all of them, "
        "the driver and Ray share them too)",
        f"fixed-point jobs: {settings['points']} enqueued feasible points, {settings['repeats']} repeat(s) each; "
        "loop = first ask to last tell; medians over repeats",
        "",
        f"{'configuration':<22}{'loop s':>8}{'train s':>9}{'s/trial':>8}{'overhead':>10}{'outside worker':>16}"
        f"{'data s':>8}{'executor s':>11}{'warm-up s':>10}",
    ]
    for label, c in summary["configs"].items():
        startup = c["median_startup_seconds"]
        share, outside = c["median_overhead_share"], c["median_outside_worker_share"]
        lines.append(
            f"{label:<22}{c['median_loop_seconds']:>8.1f}{c['median_sum_train_seconds']:>9.1f}"
            f"{c['median_train_seconds_per_trial']:>8.2f}"
            f"{_percent(share):>10}{_percent(outside):>16}"
            f"{startup['dataset_and_space']:>8.2f}{startup['executor_start']:>11.2f}"
            f"{startup['process_warmup']:>10.2f}"
        )
    lines.append("")
    lines.append("overhead breakdown (share of loop wall time, medians):")
    for label, c in summary["configs"].items():
        if c["median_breakdown_share"] is None:
            continue
        lines.append(f"  {label}:")
        for part, share in c["median_breakdown_share"].items():
            lines.append(f"    {100 * share:6.2f}%  {part}")
        lines.append(f"    max suggest_seconds of one trial: {c['max_suggest_seconds']:.3f} s")
    if "speedup_c2_over_c1" in summary:
        lines.append("")
        c1, c2 = summary["configs"]["ray c1 fixed"], summary["configs"]["ray c2 fixed"]
        lines.append(
            f"speed-up, Ray concurrency 2 over 1 on the same points: {summary['speedup_c2_over_c1']:.2f}x "
            f"(loop {c1['median_loop_seconds']:.1f}s -> {c2['median_loop_seconds']:.1f}s; per repeat "
            + ", ".join(f"{s:.2f}x" for s in summary["speedup_per_repeat"])
            + f"); worker processes per c2 run: {[len(p) for p in c2['worker_pids_per_run']]}"
        )
    lines.append("")
    for goal, met in summary["goals"].items():
        lines.append(f"GOAL {goal}: {'PASS' if met else 'FAIL'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 points, 1 repeat, 2 epochs")
    parser.add_argument("--points", type=int, default=12, help="fixed points per job")
    parser.add_argument("--repeats", type=int, default=3, help="jobs per fixed-point configuration")
    parser.add_argument("--skip-mobo", action="store_true", help="leave out the mobo jobs")
    args = parser.parse_args()
    quiet()
    base = quickstart_document()
    mobo_trials, mobo_initial = base["n_trials"], base["initial_trials"]
    if args.quick:
        args.points, args.repeats = 4, 1
        base["training"] = {**base["training"], "epochs": 2}
        mobo_trials, mobo_initial = 8, 4
    settings = {
        "quickstart": str(QUICKSTART.relative_to(QUICKSTART.parents[1])),
        "points": args.points,
        "repeats": args.repeats,
        "epochs": base["training"]["epochs"],
        "batch_size": base["training"]["batch_size"],
        "mobo_trials": None if args.skip_mobo else mobo_trials,
        "mobo_initial_trials": None if args.skip_mobo else mobo_initial,
    }
    inprocess = {"backend": "inprocess"}
    ray_c1 = {"backend": "ray", "concurrency": 1, "cpus_per_trial": 1}
    ray_c2 = {"backend": "ray", "concurrency": 2, "cpus_per_trial": 1}
    fixed = {
        label: job_spec(base, strategy="random", n_trials=args.points, initial=1, execution=execution)
        for label, execution in (("in-process fixed", inprocess), ("ray c1 fixed", ray_c1), ("ray c2 fixed", ray_c2))
    }
    points = fixed_points(fixed["in-process fixed"], args.points)
    digest = source_digest()
    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    jobs: list[dict[str, Any]] = []
    name = "overhead" + ("_quick" if args.quick else "")
    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(exist_ok=True)

    def write(summary: Mapping[str, Any] | None) -> dict[str, Any]:
        out = {
            "benchmark": name,
            "settings": settings,
            "source_digest": digest,
            "fixed_points": points,
            "summary": summary,
            "jobs": jobs,
            "wall_seconds": round(time.perf_counter() - wall_start, 1),
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "load_average_at_start": load_before,
            "load_average_at_end": os.getloadavg(),
        }
        path.write_text(json.dumps(out, indent=1) + "\n")
        return out

    for repeat in range(args.repeats):
        for label, spec in fixed.items():
            jobs.append(run_measured(label, spec, enqueue=points, repeat=repeat))
            _print_job(jobs[-1])
            write(None)
    if not args.skip_mobo:
        for label, execution in (("mobo in-process", inprocess), ("mobo ray c1", ray_c1)):
            spec = job_spec(base, strategy="mobo", n_trials=mobo_trials, initial=mobo_initial, execution=execution)
            try:
                jobs.append(run_measured(label, spec))
            except Exception as exc:  # report mobo problems without losing the other figures
                print(f"{label}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                settings.setdefault("mobo_errors", []).append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            _print_job(jobs[-1])
            write(None)
    summary = summarise(jobs)
    if source_digest() != digest:
        settings["warning"] = "the product's source changed during the benchmark; its figures mix code versions"
        print(f"WARNING: {settings['warning']}", flush=True)
    out = write(summary)
    print()
    print(format_summary(summary, settings))
    print(f"\nproduct source digest: {digest}; wall {out['wall_seconds']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
