"""Differentiable search against mobo: front hypervolume against CPU time, on FSDD and MNIST.

Issue 10's goal: ``dnas`` reaches mobo's hypervolume after ``--mobo-trials`` (40)
trials in at most a third of mobo's CPU time, under the same budgets.

The problems, their budgets, objectives and training fidelity are search_quality's
(``search_quality.PROBLEMS`` and ``TRAINING``: MNIST with ``sparse_cnn``, budgets SRAM
40 KiB and flash 96 KiB; FSDD with ``ds_cnn``, latency 50 ms and flash 96 KiB; every
trial trains at the same fidelity), so the hypervolumes share one reference point per
problem. Three strategies run per (problem, seed), each as one :class:`SearchEngine`
job in its own SQLite study:

* ``mobo``: ``--mobo-trials`` trials, ``--initial-trials`` Sobol points;
* ``dnas``: ``--dnas-points`` trials, each a derived architecture of one penalty
  strength of a single supernet search (``--dnas-warmup`` and ``--dnas-search-epochs``);
* ``hybrid``: ``--mobo-trials`` trials, the first ``--hybrid-points`` derived by DNAS
  and counted in mobo's ``--initial-trials``.

"CPU seconds" is the engine's own axis (``SearchResults.hypervolume_history``): the
summed work of the trials so far (``TrialRecord.work_seconds``: driver seconds, i.e.
the sampler's suggestion or the supernet's search and the costing, plus worker seconds,
i.e. build, training and evaluation). Each job runs on one torch thread, so these are
close to CPU time. The sweep's first DNAS trial carries the supernet's search
(``dnas_search_seconds``); every derived architecture is then trained from scratch.

Per problem, the target is mobo's final hypervolume (median over seeds); each
strategy's "CPU to target" is the first point of its history at or above the target
(median over seeds, missing when a seed never gets there). The goal ratio is dnas's
CPU to target over mobo's CPU for all of its trials.

Usage (the full benchmark; hours on a 2-core machine):
``.venv/bin/python bench/dnas_vs_mobo.py --datasets fsdd mnist --seeds 0 1 2 --mobo-trials 40``
Smoke run: ``--quick`` (MNIST, 1,000 images, seed 0, 8 mobo trials, 3 DNAS points, 1 epoch).
Writes ``bench/results/dnas_vs_mobo.json`` (``dnas_vs_mobo_quick.json`` with ``--quick``,
``NAME.json`` with ``--name NAME``).
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
from search_quality import PROBLEMS, TRAINING, _hv_at, job_document

STRATEGIES = ("dnas", "mobo", "hybrid")
CPU_RATIO_GOAL = 1.0 / 3.0
CPU_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
"""HV is also read at these fractions of mobo's median CPU seconds."""


def document(problem: str, strategy: str, seed: int, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The job spec of one run: search_quality's problem and fidelity, this strategy's trial budget."""
    base = {
        "n_trials": settings["mobo_trials"],
        "initial_trials": settings["initial_trials"],
        "epochs": settings["epochs"],
        "train_subset": settings["train_subset"],
    }
    doc = job_document(problem, "mobo", seed, base)
    doc["name"] = f"dnas_vs_mobo-{problem}-{strategy}-{seed}"
    doc["strategy"] = strategy
    dnas = {"warmup_epochs": settings["dnas_warmup"], "search_epochs": settings["dnas_search_epochs"]}
    if settings.get("dnas_penalty_range") is not None:
        dnas["penalty_range"] = list(settings["dnas_penalty_range"])
    if settings.get("dnas_arch_lr") is not None:
        dnas["arch_lr"] = settings["dnas_arch_lr"]
    if strategy == "dnas":
        doc["n_trials"] = settings["dnas_points"]
        doc["initial_trials"] = 1
        doc["dnas"] = dnas
    elif strategy == "hybrid":
        doc["dnas"] = dnas | {"sweep_points": settings["hybrid_points"]}
    return doc


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    quiet()


def run_one(task: tuple[str, str, int, dict[str, Any], str | None]) -> dict[str, Any]:
    """One (problem, strategy, seed) job: its hypervolume history, front and timings, or its error."""
    from sparse_nas.spec import SearchJobSpec

    problem, strategy, seed, settings, data_dir = task
    out: dict[str, Any] = {"problem": problem, "strategy": strategy, "seed": seed, "source_digest": source_digest()}
    started = time.perf_counter()
    try:
        spec = SearchJobSpec.model_validate(document(problem, strategy, seed, settings))
        with tempfile.TemporaryDirectory(prefix="dvm-") as directory:
            job = run_job(spec, directory, data_dir=data_dir)
        results = job.results
        out.update(results_summary(results, "source"))
        out.update(
            dnas=[
                {"number": r.number, **{k: v for k, v in r.measured.items() if k.startswith("dnas_")}}
                for r in results.records
                if r.source == "dnas"
            ],
            run_seconds=job.run_seconds,
            process_cpu_seconds=job.cpu_seconds,
        )
    except Exception:  # one job crashing must not lose the others
        out["error"] = traceback.format_exc()
    out["wall_seconds"] = time.perf_counter() - started
    return out


def cpu_to_reach(history: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """CPU seconds of the first history entry whose hypervolume is at least ``target``; None if none is."""
    for entry in history:
        if entry["hypervolume"] >= target - 1e-12:
            return float(entry["cpu_seconds"])
    return None


def summarise(runs: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Per problem: the mobo target, each strategy's final HV, CPU and CPU to target, and the goal."""
    summary: dict[str, Any] = {}
    for problem in settings["datasets"]:
        done = [r for r in runs if r["problem"] == problem and "error" not in r and r["hypervolume_history"]]
        mobo = [r for r in done if r["strategy"] == "mobo"]
        if not mobo:
            continue
        target = median([r["hypervolume"] for r in mobo])
        mobo_cpu = median([r["hypervolume_history"][-1]["cpu_seconds"] for r in mobo])
        cpu_points = [f * mobo_cpu for f in CPU_FRACTIONS]
        strategies: dict[str, Any] = {}
        for strategy in settings["strategies"]:
            mine = [r for r in done if r["strategy"] == strategy]
            if not mine:
                continue
            reach = [cpu_to_reach(r["hypervolume_history"], target) for r in mine]
            reached = [t for t in reach if t is not None]
            strategies[strategy] = {
                "seeds": [r["seed"] for r in mine],
                "final_hypervolume": median([r["hypervolume"] for r in mine]),
                "cpu_seconds": median([r["hypervolume_history"][-1]["cpu_seconds"] for r in mine]),
                "cpu_to_target": reach,
                "median_cpu_to_target": median(reached) if len(reached) == len(reach) else None,
                "hv_at_mobo_cpu_fractions": {
                    str(f): median([_hv_at(r["hypervolume_history"], "cpu_seconds", s) for r in mine])
                    for f, s in zip(CPU_FRACTIONS, cpu_points, strict=True)
                },
                "dnas_search_seconds": median(
                    [d["dnas_search_seconds"] for r in mine for d in r["dnas"] if "dnas_search_seconds" in d]
                ),
            }
        entry: dict[str, Any] = {"mobo_target_hypervolume": target, "mobo_cpu_seconds": mobo_cpu}
        entry["strategies"] = strategies
        dnas = strategies.get("dnas")
        if dnas is not None:
            t = dnas["median_cpu_to_target"]
            entry["dnas_cpu_ratio"] = None if t is None or not mobo_cpu else t / mobo_cpu
            entry["goal_dnas_within_a_third"] = (
                entry["dnas_cpu_ratio"] is not None and entry["dnas_cpu_ratio"] <= CPU_RATIO_GOAL
            )
        summary[problem] = entry
    return summary


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(summary: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    lines = [
        f"dnas vs mobo: mobo {settings['mobo_trials']} trials ({settings['initial_trials']} initial), dnas "
        f"{settings['dnas_points']} points (warm-up {settings['dnas_warmup']}, search {settings['dnas_search_epochs']} "
        f"epochs), hybrid {settings['hybrid_points']} DNAS points; {settings['epochs']} epochs per trial; "
        f"seeds {settings['seeds']}"
    ]
    for problem, entry in summary.items():
        budgets = ", ".join(f"{k} {v:g}" for k, v in PROBLEMS[problem]["budgets"].items())
        lines += [
            "",
            f"== {problem} (budgets {budgets}): mobo target HV {_fmt(entry['mobo_target_hypervolume'], '.4f')} "
            f"after {_fmt(entry['mobo_cpu_seconds'], '.0f')} CPU s",
            f"  {'strategy':<8}{'final HV':>10}{'CPU s':>9}{'CPU to target':>15}{'search s':>10}"
            + "".join(f"{f'HV@{f:g}':>10}" for f in CPU_FRACTIONS),
        ]
        for strategy, stats in entry["strategies"].items():
            lines.append(
                f"  {strategy:<8}{_fmt(stats['final_hypervolume'], '.4f'):>10}{_fmt(stats['cpu_seconds'], '.0f'):>9}"
                f"{_fmt(stats['median_cpu_to_target'], '.0f'):>15}{_fmt(stats['dnas_search_seconds'], '.0f'):>10}"
                + "".join(f"{_fmt(v, '.4f'):>10}" for v in stats["hv_at_mobo_cpu_fractions"].values())
            )
        lines.append(
            "  (HV@f: hypervolume after f x mobo's CPU seconds; CPU to target: '-' if some seed never got there)"
        )
        if "dnas_cpu_ratio" in entry:
            met = "PASS" if entry["goal_dnas_within_a_third"] else "FAIL"
            lines.append(
                f"GOAL {problem}: dnas reaches mobo's final HV within 1/3 of its CPU: {met} "
                f"(ratio {_fmt(entry['dnas_cpu_ratio'])})"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: mnist (1,000 images), seed 0, small budgets")
    parser.add_argument("--datasets", nargs="+", choices=sorted(PROBLEMS), default=["fsdd", "mnist"])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--mobo-trials", type=int, default=40)
    parser.add_argument("--initial-trials", type=int, default=10)
    parser.add_argument("--dnas-points", type=int, default=6, help="dnas's trials: one per penalty strength")
    parser.add_argument("--hybrid-points", type=int, default=5, help="DNAS trials seeding hybrid's mobo")
    parser.add_argument("--dnas-warmup", type=int, default=1, help="supernet epochs training weights only")
    parser.add_argument("--dnas-search-epochs", type=int, default=2, help="supernet epochs of alternating steps")
    parser.add_argument(
        "--dnas-penalty-range", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
        help="the sweep's penalty strengths (default: the job spec's)",
    )
    parser.add_argument("--dnas-arch-lr", type=float, default=None, help="default: the job spec's")
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"], help="training epochs of every trial")
    parser.add_argument("--mnist-subset", type=int, default=PROBLEMS["mnist"]["dataset"]["train_subset"])
    parser.add_argument("--fsdd-subset", type=int, default=None, help="default: all 2,430 training clips")
    parser.add_argument("--workers", type=int, default=1, help="jobs at a time, one torch thread each")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--name", default=None, help="result file bench/results/NAME.json (default dnas_vs_mobo)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.epochs = ["mnist"], [0], 1
        args.mobo_trials, args.initial_trials, args.dnas_points, args.hybrid_points = 8, 4, 3, 2
        args.mnist_subset = min(args.mnist_subset, 1000)
    settings: dict[str, Any] = {
        "datasets": args.datasets,
        "strategies": args.strategies,
        "seeds": args.seeds,
        "mobo_trials": args.mobo_trials,
        "initial_trials": args.initial_trials,
        "dnas_points": args.dnas_points,
        "hybrid_points": args.hybrid_points,
        "dnas_warmup": args.dnas_warmup,
        "dnas_search_epochs": args.dnas_search_epochs,
        "dnas_penalty_range": args.dnas_penalty_range,
        "dnas_arch_lr": args.dnas_arch_lr,
        "epochs": args.epochs,
        "train_subset": {"mnist": args.mnist_subset, "fsdd": args.fsdd_subset},
        "workers": args.workers,
    }
    name = args.name or "dnas_vs_mobo" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tasks = [
        (problem, strategy, seed, settings, args.data_dir)
        for seed in args.seeds
        for problem in args.datasets
        for strategy in args.strategies
    ]
    runs: list[dict[str, Any]] = []
    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    print(f"{len(tasks)} runs, {args.workers} at a time", flush=True)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=_init_worker, maxtasksperchild=1) as pool:
        for run in pool.imap_unordered(run_one, tasks):
            runs.append(run)
            label = f"{run['problem']:<6} {run['strategy']:<7} seed {run['seed']}"
            if "error" in run:
                print(f"{label} ERROR:\n{run['error']}", flush=True)
            else:
                cpu = run["hypervolume_history"][-1]["cpu_seconds"] if run["hypervolume_history"] else 0.0
                print(
                    f"{label} HV {run['hypervolume']:.4f}  trial CPU {cpu:.0f}s  wall {run['wall_seconds']:.0f}s",
                    flush=True,
                )
    summary = summarise(runs, settings)
    out = {
        "benchmark": name,
        "settings": settings,
        "job_specs_seed0": {f"{p}/{s}": document(p, s, 0, settings) for p in args.datasets for s in args.strategies},
        "summary": summary,
        "runs": sorted(runs, key=lambda r: (r["problem"], r["strategy"], r["seed"])),
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_at_start": load_before,
        "load_average_now": os.getloadavg(),
    }
    path.write_text(json.dumps(out, indent=1) + "\n")
    print()
    print(format_summary(summary, settings))
    print(f"\nwall {out['wall_seconds']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
