"""Wall time of one mobo suggestion at 50, 100 and 200 complete trials (goal: at most 1 s at 200).

The sampler drives a study by itself, as in a job: ds_cnn on FSDD-shaped MFCCs
(1 x 49 x 10, 10 classes), STM32F446RE, TFLM, objectives accuracy, flash and SRAM,
budgets of 64,000 B flash and 48,000 B SRAM (about 70% of random points break them).
Accuracy is synthetic (a deterministic function of the point; no training), so only
the sampler is timed. A suggestion is ``study.ask()`` plus ``space.sample(trial)``;
at each checkpoint the next ``--repeats`` suggestions are timed (with the checkpoint's
number of complete trials, plus one per repeat), in wall time and in process CPU time.
The sampler runs torch on one thread, so on a machine shared with other jobs the CPU
time is the figure to compare with the goal (wall time then includes waiting for a core).

Also reported, not counted in the goal: the one-off screening of the candidate pool
(the first BO suggestion pays it) and a cold suggestion at the last checkpoint, on a
copy of the study without the stored GP hyper-parameters (a job resumed from another
strategy's study fits the GP from scratch once).

Usage: .venv/bin/python bench/mobo_suggest_time.py [--quick] [--repeats 5] [--seed 0]
Prints a table and writes bench/results/mobo_suggest_time.json
(``mobo_suggest_time_quick.json`` with ``--quick``: checkpoints 20 and 50, 3 repeats).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from search_spaces.families import get_search_space
from sparse_nas.search.costs import cost_point
from sparse_nas.search.records import objective_values
from sparse_nas.strategies.mobo import GP_STATE_ATTR, MoboSampler

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = "stm32f446re"
RUNTIME = "tflm"
OBJECTIVES = ("accuracy", "flash_bytes", "sram_bytes")
DIRECTIONS = ["maximize", "minimize", "minimize"]
LIMITS = {"flash_bytes": 64_000.0, "sram_bytes": 48_000.0}
REFERENCE = {"accuracy": 0.0, **LIMITS}
GOAL_S = 1.0
GOAL_TRIALS = 200


def synthetic_accuracy(params: dict[str, Any]) -> float:
    """Saturating in the network's total width, a little better with depth and dense blocks, plus a hashed jitter."""
    n = params["n_blocks"]
    width = params["stem_channels"] + sum(params[f"block{i}_channels"] for i in range(n))
    dense = sum(params[f"block{i}_pw_method"] == "dense" for i in range(n)) / n
    jitter = int(hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8], 16) / 16**8
    return 0.3 + 0.5 * (1.0 - math.exp(-width / 150.0)) + 0.03 * n / 6 + 0.05 * dense + 0.02 * jitter


def suggest_and_tell(study: optuna.Study, space: Any) -> tuple[float, float]:
    """One suggestion, timed (wall and process CPU seconds), and its synthetic result (not timed)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    trial = study.ask()
    params = space.sample(trial)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    costs = cost_point(space, params, DEVICE, RUNTIME)
    for metric, value in costs.items():
        trial.set_user_attr(metric, value)
    trial.set_user_attr("status", "complete")
    study.tell(trial, objective_values(OBJECTIVES, synthetic_accuracy(params), costs))
    return seconds, cpu_seconds


def cold_copy(study: optuna.Study, sampler: MoboSampler) -> optuna.Study:
    """The study's trials without the stored GP hyper-parameters, under a fresh sampler."""
    copy = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    for trial in study.trials:
        attrs = {k: v for k, v in trial.system_attrs.items() if k != GP_STATE_ATTR}
        copy.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                values=trial.values,
                user_attrs=trial.user_attrs,
                system_attrs=attrs,
            )
        )
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="checkpoints 20 and 50, 3 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoints = (20, 50) if args.quick else (50, 100, 200)
    repeats = 3 if args.quick else args.repeats
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    space = get_search_space("ds_cnn", (1, 49, 10), 10)

    def make_sampler() -> MoboSampler:
        return MoboSampler(space, DEVICE, RUNTIME, OBJECTIVES, LIMITS, REFERENCE, seed=args.seed)

    sampler = make_sampler()
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    all_times: list[tuple[float, float]] = []
    figures: dict[int, dict[str, float]] = {}
    run_t0 = time.perf_counter()
    for target in checkpoints:
        while len(study.trials) < target:
            all_times.append(suggest_and_tell(study, space))
        timed = [suggest_and_tell(study, space) for _ in range(repeats)]
        all_times += timed
        wall, cpu = [t[0] for t in timed], [t[1] for t in timed]
        figures[target] = {
            "median_s": statistics.median(wall),
            "min_s": min(wall),
            "max_s": max(wall),
            "cpu_median_s": statistics.median(cpu),
            "cpu_max_s": max(cpu),
        }
    run_s = time.perf_counter() - run_t0
    first_bo = all_times[sampler.n_initial][0]

    last = checkpoints[-1]
    cold = cold_copy(study, make_sampler())
    cold_s = suggest_and_tell(cold, space)[0]  # includes the pool screening of the new sampler
    cold_warm_s = suggest_and_tell(cold, space)[0]  # the next one warm-starts again

    print(f"mobo suggestion wall time, ds_cnn / {DEVICE} / 3 objectives, torch {torch.__version__}:")
    print("| complete trials | wall median | wall min | wall max | CPU median | CPU max |")
    print("|---|---|---|---|---|---|")
    for target, f in figures.items():
        cells = [f[k] for k in ("median_s", "min_s", "max_s", "cpu_median_s", "cpu_max_s")]
        print(f"| {target} | " + " | ".join(f"{v:.3f} s" for v in cells) + " |")
    print(f"first BO suggestion (includes the one-off pool screening): {first_bo:.3f} s")
    print(f"cold suggestion at {last} trials (pool screening + GP fit from scratch): {cold_s:.3f} s")
    print(f"the suggestion after it (warm again): {cold_warm_s:.3f} s")
    print(f"whole run of {len(study.trials)} suggestions: {run_s:.1f} s; load average {os.getloadavg()[0]:.1f}")
    goal_met = None
    if GOAL_TRIALS in figures:
        goal_met = figures[GOAL_TRIALS]["max_s"] <= GOAL_S
        verdict = "met" if goal_met else "MISSED"
        print(f"goal: at most {GOAL_S} s per suggestion at {GOAL_TRIALS} complete trials: {verdict}")

    result = {
        "benchmark": "mobo_suggest_time",
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0],
        },
        "setup": {
            "search_space": "ds_cnn (1, 49, 10), 10 classes",
            "device": DEVICE,
            "runtime": RUNTIME,
            "objectives": list(OBJECTIVES),
            "limits": LIMITS,
            "sampler": {
                "seed": args.seed,
                "n_initial": sampler.n_initial,
                "pool_size": sampler.pool_size,
                "n_scored": sampler.n_scored,
                "mc_samples": sampler.mc_samples,
            },
            "repeats": repeats,
        },
        "suggestion_s": {str(target): f for target, f in figures.items()},
        "first_bo_suggestion_s": first_bo,
        "cold_suggestion_s": {"complete_trials": last, "first": cold_s, "next": cold_warm_s},
        "run_s": run_s,
        "goal_max_s_at_200_le_1": goal_met,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("mobo_suggest_time_quick.json" if args.quick else "mobo_suggest_time.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
