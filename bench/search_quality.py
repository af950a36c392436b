"""Search quality: hypervolume of mobo against gp, nsga2, tpe and random on two budgeted problems.

Issue goals, at the same trial budget and the same training fidelity for every strategy:

* mobo's final hypervolume (median over seeds) at least 1.15x random's and at least
  every Optuna baseline's (gp, nsga2, tpe), on each problem;
* a mobo suggestion in at most 1 s at 200 observed trials on this machine (measured by
  ``bench/mobo_suggest_time.py`` with synthetic accuracies; its JSON is read here if present).

Problems (``PROBLEMS``; budgets picked from the costs of random points so that about half
of the space breaks them, which is what makes the constrained search matter):

* ``mnist``: MNIST, a stratified subset of the training split, ``sparse_cnn`` on the
  STM32F446RE (TFLM), objectives accuracy, flash, SRAM; budgets SRAM 40 KiB (the
  median of random points is 40.4 KiB) and flash 96 KiB. 47% of random points meet both.
* ``fsdd``: Free Spoken Digit Dataset MFCCs (1, 49, 10), ``ds_cnn``, objectives accuracy,
  flash, latency; budgets latency 50 ms (median of random points 56.5 ms) and flash
  96 KiB. 45% of random points meet both.

Each (problem, strategy, seed) run is one :class:`SearchEngine` job with the in-process
executor and its own SQLite study in a temporary directory; ``--workers`` spawned
processes (default 2, for a 2-core machine) run jobs side by side, one torch thread
each. Hypervolume is the engine's normalised one (``SearchResults``), whose reference
point depends on the budgets only, so seeds and strategies compare on one scale. "CPU
seconds" is the engine's ``cpu_seconds`` axis: the summed durations of the trials so
far (ask to tell; each job runs on one thread, so this is close to its CPU time).

Results are written after every finished run, so an interrupted benchmark keeps its
finished runs; ``--resume`` reuses the runs of an earlier result file with the same
settings that were measured on the same product code (``source_digest``) and runs the
rest again.

Usage: ``.venv/bin/python bench/search_quality.py [--quick] [--resume] [--workers 2]``
Writes ``bench/results/search_quality.json`` (``search_quality_quick.json`` with
``--quick``: 8 trials, 4 initial, seed 0, mobo and random, 1 epoch).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from _search_jobs import DEFAULT_DATA_DIR, RESULTS, median, quiet, results_summary, run_job, source_digest

STRATEGIES = ("mobo", "gp", "nsga2", "tpe", "random")
BASELINES = ("gp", "nsga2", "tpe")
MOBO_OVER_RANDOM_GOAL = 1.15
SUGGEST_GOAL_SECONDS = 1.0
SUGGEST_GOAL_TRIALS = 200
CPU_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
"""HV against CPU time is read at these fractions of the shortest run of the problem."""
# Longest first, so that the pool does not end on one long run: mobo trains every
# trial it suggests (all feasible), random trains about half.
_RUN_ORDER = {"mobo": 0, "gp": 1, "tpe": 2, "nsga2": 3, "random": 4}

TRAINING: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 64,
    "lr": 5e-3,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
}
"""Every strategy's trials train alike, at a low fidelity so that 30 runs of 40 trials fit in about 40 minutes
on 2 cores: 3 epochs (and 3,000 MNIST images) took 18 minutes per seed on the shared 2-core machine, a third of it
Optuna's GPSampler suggesting (5-25 s per suggestion)."""

PROBLEMS: dict[str, dict[str, Any]] = {
    "mnist": {
        # 5% validation (3,000 images) rather than 10%: validation runs after every epoch.
        "dataset": {"name": "mnist", "train_subset": 2000, "val_fraction": 0.05},
        "search_space": {"name": "sparse_cnn"},
        "device": "stm32f446re",
        "budgets": {"max_sram_bytes": 40 * 1024, "max_flash_bytes": 96 * 1024},
        "objectives": ["accuracy", "flash_bytes", "sram_bytes"],
    },
    "fsdd": {
        # The default options give (1, 49, 10) MFCC images, ds_cnn's input.
        "dataset": {"name": "fsdd"},
        "search_space": {"name": "ds_cnn"},
        "device": "stm32f446re",
        "budgets": {"max_latency_ms": 50.0, "max_flash_bytes": 96 * 1024},
        "objectives": ["accuracy", "flash_bytes", "latency_ms"],
    },
}


def job_document(problem: str, strategy: str, seed: int, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The job spec (as a dict) of one run."""
    base = PROBLEMS[problem]
    dataset = dict(base["dataset"])
    subset = settings["train_subset"].get(problem, dataset.get("train_subset"))
    if subset is None:
        dataset.pop("train_subset", None)
    else:
        dataset["train_subset"] = subset
    return {
        "name": f"search_quality-{problem}-{strategy}-{seed}",
        **base,
        "dataset": dataset,
        "strategy": strategy,
        "seed": seed,
        "n_trials": settings["n_trials"],
        "initial_trials": settings["initial_trials"],
        "training": {**TRAINING, "epochs": settings["epochs"]},
        "execution": {"backend": "inprocess"},
    }


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    quiet()


def run_one(task: tuple[str, str, int, dict[str, Any], str | None]) -> dict[str, Any]:
    """Run one (problem, strategy, seed) job in a worker; its history, timings and statuses, or its error."""
    from sparse_nas.spec import SearchJobSpec

    problem, strategy, seed, settings, data_dir = task
    out: dict[str, Any] = {
        "problem": problem,
        "strategy": strategy,
        "seed": seed,
        "pid": os.getpid(),
        "source_digest": source_digest(),
    }
    started = time.perf_counter()
    try:
        spec = SearchJobSpec.model_validate(job_document(problem, strategy, seed, settings))
        with tempfile.TemporaryDirectory(prefix="sq-") as directory:
            job = run_job(spec, directory, data_dir=data_dir)
        results = job.results
        out.update(results_summary(results, "params"))
        out.update(
            run_seconds=job.run_seconds,
            loop_seconds=job.loop_seconds,
            process_cpu_seconds=job.cpu_seconds,
        )
    except Exception:  # one strategy crashing must not lose the other runs
        out["error"] = traceback.format_exc()
    out["wall_seconds"] = time.perf_counter() - started
    return out


# --- summary -------------------------------------------------------------------------------


def _hv_at(history: Sequence[Mapping[str, Any]], key: str, at: float) -> float:
    """Hypervolume of the last history entry with ``key`` at most ``at`` (0.0 before the first)."""
    volume = 0.0
    for entry in history:
        if entry[key] > at + 1e-9:
            break
        volume = entry["hypervolume"]
    return volume


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    return {"median": median(values), "min": min(values, default=None), "max": max(values, default=None)}


def _trial_checkpoints(n_trials: int) -> list[int]:
    points = list(range(10, n_trials + 1, 10)) if n_trials >= 20 else sorted({max(1, n_trials // 2), n_trials})
    if points[-1] != n_trials:
        points.append(n_trials)
    return points


def _suggest_ranges(n_trials: int, initial_trials: int) -> list[tuple[int, int]]:
    """Trial-number ranges [lo, hi): the initial phase, then blocks of 10."""
    ranges = [(0, initial_trials)]
    lo = initial_trials
    while lo < n_trials:
        hi = min(n_trials, (lo // 10 + 1) * 10)
        ranges.append((lo, hi))
        lo = hi
    return ranges


def summarise(runs: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Per problem and strategy: final and per-budget hypervolume over seeds, ratios, goals, timings."""
    n_trials = settings["n_trials"]
    checkpoints = _trial_checkpoints(n_trials)
    summary: dict[str, Any] = {"trial_checkpoints": checkpoints, "problems": {}}
    for problem in settings["problems"]:
        done = [r for r in runs if r["problem"] == problem and "error" not in r]
        if not done:
            continue
        shortest = min(r["hypervolume_history"][-1]["cpu_seconds"] for r in done if r["hypervolume_history"])
        cpu_points = [round(f * shortest, 1) for f in CPU_FRACTIONS]
        per_strategy: dict[str, Any] = {}
        for strategy in settings["strategies"]:
            mine = sorted((r for r in done if r["strategy"] == strategy), key=lambda r: r["seed"])
            if not mine:
                continue
            finals = [r["hypervolume"] for r in mine]
            complete = [t for r in mine for t in r["trials"] if t["status"] == "complete"]
            curve = [
                median([_hv_at(r["hypervolume_history"], "trials_done", k) for r in mine])
                for k in range(1, n_trials + 1)
            ]
            failures = sorted({t["reason"] for r in mine for t in r["trials"] if t.get("reason")})
            per_strategy[strategy] = {
                "seeds": [r["seed"] for r in mine],
                "final_hypervolume": finals,
                "final": _spread(finals),
                "at_trials": {
                    str(k): median([_hv_at(r["hypervolume_history"], "trials_done", k) for r in mine])
                    for k in checkpoints
                },
                "at_cpu_seconds": {
                    str(s): median([_hv_at(r["hypervolume_history"], "cpu_seconds", s) for r in mine])
                    for s in cpu_points
                },
                "median_curve_by_trials": curve,
                "trial_cpu_seconds": _spread([r["hypervolume_history"][-1]["cpu_seconds"] for r in mine]),
                "run_wall_seconds": _spread([r["run_seconds"] for r in mine]),
                "counts": {
                    status: sum(r["counts"].get(status, 0) for r in mine)
                    for status in ("complete", "infeasible", "stopped", "failed")
                },
                "failure_reasons": failures,
                "median_complete_trial_seconds": median([t["duration_s"] for t in complete if t["duration_s"]]),
                "median_train_seconds": median([t["train_seconds"] for t in complete if t["train_seconds"]]),
                "median_worker_seconds": median([t["worker_seconds"] for t in complete if t["worker_seconds"]]),
            }
        entry: dict[str, Any] = {"cpu_seconds_points": cpu_points, "strategies": per_strategy}
        mobo = per_strategy.get("mobo")
        if mobo is not None:
            ratios = {
                other: (mobo["final"]["median"] / stats["final"]["median"] if stats["final"]["median"] else None)
                for other, stats in per_strategy.items()
                if other != "mobo"
            }
            entry["mobo_over"] = ratios
            goals = {}
            if "random" in ratios:
                goals["mobo >= 1.15x random"] = (
                    ratios["random"] is not None and ratios["random"] >= MOBO_OVER_RANDOM_GOAL
                )
            for baseline in BASELINES:
                if baseline in ratios:
                    goals[f"mobo >= {baseline}"] = ratios[baseline] is not None and ratios[baseline] >= 1.0
            entry["goals"] = goals
            mobo_runs = [r for r in done if r["strategy"] == "mobo"]
            entry["mobo_suggest_seconds"] = [
                {
                    "trials": f"{lo}-{hi - 1}",
                    "median": median(
                        [t["suggest_seconds"] for r in mobo_runs for t in r["trials"] if lo <= t["number"] < hi]
                    ),
                    "max": max(
                        (t["suggest_seconds"] for r in mobo_runs for t in r["trials"] if lo <= t["number"] < hi),
                        default=None,
                    ),
                }
                for lo, hi in _suggest_ranges(n_trials, settings["initial_trials"])
            ]
        summary["problems"][problem] = entry
    return summary


def mobo_suggest_time() -> dict[str, Any] | None:
    """``bench/results/mobo_suggest_time.json`` (written by ``bench/mobo_suggest_time.py``), if present."""
    path = RESULTS / "mobo_suggest_time.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(summary: Mapping[str, Any], settings: Mapping[str, Any], suggest: Mapping[str, Any] | None) -> str:
    """The printed report."""
    lines = [
        f"search quality: {settings['n_trials']} trials ({settings['initial_trials']} initial), "
        f"seeds {settings['seeds']}, {settings['epochs']} epochs per trial, {settings['workers']} jobs at a time",
    ]
    checkpoints = summary["trial_checkpoints"]
    for problem, entry in summary["problems"].items():
        budgets = ", ".join(f"{k} {v:g}" for k, v in PROBLEMS[problem]["budgets"].items())
        lines += ["", f"== {problem}: budgets {budgets}; objectives {', '.join(PROBLEMS[problem]['objectives'])}"]
        lines.append("hypervolume after k trials (median over seeds), final HV median [min, max]:")
        lines.append(
            f"  {'strategy':<8}" + "".join(f"{'@' + str(k):>8}" for k in checkpoints) + "   final median [min, max]"
        )
        for strategy, stats in entry["strategies"].items():
            final = stats["final"]
            lines.append(
                f"  {strategy:<8}"
                + "".join(f"{_fmt(stats['at_trials'][str(k)]):>8}" for k in checkpoints)
                + f"   {_fmt(final['median'])} [{_fmt(final['min'])}, {_fmt(final['max'])}]"
            )
        lines.append(
            "hypervolume after t trial-CPU seconds (median over seeds; t = 25/50/75/100% of the shortest run):"
        )
        lines.append(f"  {'strategy':<8}" + "".join(f"{f'{s:.0f} s':>9}" for s in entry["cpu_seconds_points"]))
        for strategy, stats in entry["strategies"].items():
            lines.append(f"  {strategy:<8}" + "".join(f"{_fmt(v):>9}" for v in stats["at_cpu_seconds"].values()))
        lines.append("trials (summed over seeds) and time (medians):")
        lines.append(
            f"  {'strategy':<8}{'complete':>9}{'infeas.':>8}{'failed':>7}{'trial s':>9}{'train s':>9}"
            f"{'worker s':>9}{'sum trial s':>12}{'run wall s':>11}"
        )
        for strategy, stats in entry["strategies"].items():
            counts = stats["counts"]
            lines.append(
                f"  {strategy:<8}{counts['complete']:>9}{counts['infeasible']:>8}{counts['failed']:>7}"
                f"{_fmt(stats['median_complete_trial_seconds'], '.1f'):>9}"
                f"{_fmt(stats['median_train_seconds'], '.1f'):>9}"
                f"{_fmt(stats['median_worker_seconds'], '.1f'):>9}"
                f"{_fmt(stats['trial_cpu_seconds']['median'], '.0f'):>12}"
                f"{_fmt(stats['run_wall_seconds']['median'], '.0f'):>11}"
            )
        lines.append(
            "  (trial/train/worker s: per complete trial; sum trial s: a run's summed trial durations, "
            "its trial-CPU seconds; run wall s: SearchEngine.run)"
        )
        for strategy, stats in entry["strategies"].items():
            if stats["failure_reasons"]:
                lines.append(f"  {strategy} failures: {'; '.join(stats['failure_reasons'])}")
        if "mobo_over" in entry:
            lines.append(
                "mobo / other (final median HV): " + ", ".join(f"{k} {_fmt(v)}x" for k, v in entry["mobo_over"].items())
            )
            for goal, met in entry["goals"].items():
                lines.append(f"GOAL {problem}: {goal}: {'PASS' if met else 'FAIL'}")
            lines.append(
                "mobo suggest_seconds in these runs (median / max by trial number): "
                + ", ".join(
                    f"{b['trials']}: {_fmt(b['median'])} / {_fmt(b['max'])}" for b in entry["mobo_suggest_seconds"]
                )
            )
    lines.append("")
    if suggest is None:
        lines.append(
            f"mobo suggestion time at 50/100/{SUGGEST_GOAL_TRIALS} observed trials: MISSING "
            "(bench/results/mobo_suggest_time.json not found; run bench/mobo_suggest_time.py)"
        )
    elif isinstance(suggest.get("suggestion_s"), Mapping):
        lines.append("mobo suggestion time, synthetic accuracies (bench/results/mobo_suggest_time.json):")
        for trials, stats in suggest["suggestion_s"].items():
            lines.append(
                f"  {trials} observed trials: median {_fmt(stats.get('median_s'))} s, max {_fmt(stats.get('max_s'))} s"
            )
        rest = {k: v for k, v in suggest.items() if k not in ("suggestion_s", "benchmark")}
        lines.append("  " + json.dumps(rest))
        at_goal = suggest["suggestion_s"].get(str(SUGGEST_GOAL_TRIALS))
        if at_goal is not None and at_goal.get("max_s") is not None:
            met = at_goal["max_s"] <= SUGGEST_GOAL_SECONDS
            lines.append(
                f"GOAL mobo suggestion <= {SUGGEST_GOAL_SECONDS:g} s at {SUGGEST_GOAL_TRIALS} trials "
                f"(max of mobo_suggest_time.json): {'PASS' if met else 'FAIL'}"
            )
    else:
        lines.append("mobo suggestion time (from bench/results/mobo_suggest_time.json):")
        lines.append(json.dumps(_compact(suggest), indent=2))
    return "\n".join(lines)


def _compact(value: Any, depth: int = 0) -> Any:
    """A JSON value with long lists cut, for printing another benchmark's result."""
    if isinstance(value, Mapping):
        return {k: _compact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 12:
        return [*(_compact(v, depth + 1) for v in value[:12]), f"... {len(value) - 12} more"]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 trials, seed 0, mobo and random, 1 epoch")
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs of the result file")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time, one torch thread each")
    parser.add_argument("--problems", nargs="+", choices=sorted(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--initial-trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    parser.add_argument("--mnist-subset", type=int, default=PROBLEMS["mnist"]["dataset"]["train_subset"])
    parser.add_argument("--fsdd-subset", type=int, default=None, help="default: all 2,430 training clips")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    args = parser.parse_args()
    if args.quick:
        args.n_trials, args.initial_trials, args.seeds, args.epochs = 8, 4, [0], 1
        args.strategies = [s for s in args.strategies if s in ("mobo", "random")] or ["mobo", "random"]
        args.mnist_subset = min(args.mnist_subset, 1000)
    settings: dict[str, Any] = {
        "problems": args.problems,
        "strategies": args.strategies,
        "seeds": args.seeds,
        "n_trials": args.n_trials,
        "initial_trials": args.initial_trials,
        "epochs": args.epochs,
        "train_subset": {"mnist": args.mnist_subset, "fsdd": args.fsdd_subset},
        "workers": args.workers,
    }
    name = "search_quality" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    runs: list[dict[str, Any]] = []
    if args.resume and path.exists():
        earlier = json.loads(path.read_text())
        # Runs of other seeds, problems or strategies are dropped; other settings must match.
        free = ("workers", "seeds", "problems", "strategies")
        same = {k: v for k, v in earlier.get("settings", {}).items() if k not in free} == {
            k: v for k, v in settings.items() if k not in free
        }
        if same:
            # A run measured on other product code (someone changed it meanwhile) is run again.
            digest = source_digest()
            wanted = [
                r
                for r in earlier["runs"]
                if "error" not in r
                and r["problem"] in args.problems
                and r["strategy"] in args.strategies
                and r["seed"] in args.seeds
            ]
            runs = [r for r in wanted if r.get("source_digest") == digest]
            stale = [f"{r['problem']}/{r['strategy']}/{r['seed']}" for r in wanted if r not in runs]
            print(f"resuming: {len(runs)} finished runs from {path}", flush=True)
            if stale:
                print(f"running again (measured on other product code): {', '.join(stale)}", flush=True)
        else:
            print(f"not resuming: {path} has other settings", flush=True)
    finished = {(r["problem"], r["strategy"], r["seed"]) for r in runs}
    tasks = [
        (problem, strategy, seed, settings, args.data_dir)
        for seed in args.seeds
        for strategy in sorted(args.strategies, key=_RUN_ORDER.__getitem__)
        for problem in args.problems
        if (problem, strategy, seed) not in finished
    ]
    specs = {
        f"{problem}/{strategy}": job_document(problem, strategy, 0, settings)
        for problem in args.problems
        for strategy in args.strategies
    }
    wall_start = time.perf_counter()
    load_before = os.getloadavg()

    def write(complete: bool) -> dict[str, Any]:
        out = {
            "benchmark": name,
            "complete": complete,
            "settings": settings,
            "job_specs_seed0": specs,
            "runs": sorted(runs, key=lambda r: (r["problem"], r["strategy"], r["seed"])),
            "wall_seconds": round(time.perf_counter() - wall_start, 1),
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "load_average_at_start": load_before,
            "load_average_now": os.getloadavg(),
        }
        if complete:
            out["summary"] = summarise(runs, settings)
            out["mobo_suggest_time"] = mobo_suggest_time()
        path.write_text(json.dumps(out, indent=1) + "\n")
        return out

    print(f"{len(tasks)} runs to do ({len(finished)} reused), {args.workers} at a time", flush=True)
    # Spawned, not forked: forking a process whose OpenMP runtime is initialised can hang.
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=_init_worker, maxtasksperchild=1) as pool:
        for run in pool.imap_unordered(run_one, tasks):
            runs.append(run)
            label = f"{run['problem']:<6} {run['strategy']:<7} seed {run['seed']}"
            if "error" in run:
                print(f"{label} ERROR after {run['wall_seconds']:.0f}s:\n{run['error']}", flush=True)
            else:
                counts = run["counts"]
                print(
                    f"{label} HV {run['hypervolume']:.4f}  complete {counts['complete']} infeasible "
                    f"{counts['infeasible']} failed {counts['failed']}  wall {run['wall_seconds']:.0f}s  "
                    f"[{time.perf_counter() - wall_start:.0f}s elapsed]",
                    flush=True,
                )
            write(complete=False)
    out = write(complete=True)
    print()
    print(format_summary(out["summary"], settings, out["mobo_suggest_time"]))
    errors = [r for r in runs if "error" in r]
    if errors:
        print(
            f"\n{len(errors)} runs failed: " + ", ".join(f"{r['problem']}/{r['strategy']}/{r['seed']}" for r in errors)
        )
    digests = sorted({r.get("source_digest", "unknown") for r in runs})
    print(f"\nproduct source digest(s) of the runs: {', '.join(digests)}")
    print(f"wall {out['wall_seconds']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
