"""The cost range every registered search space spans on a device (docs/search_spaces.md).

Usage: .venv/bin/python bench/search_space_costs.py [--device stm32f446re] [--samples 2000]
Prints a markdown table and writes bench/results/search_space_costs.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optuna

from search_spaces.families import get_search_space, search_space_names

# The dataset shape each family is documented on: (torch input shape, classes, dataset).
DATASETS = {
    "sparse_cnn": ((1, 28, 28), 10, "MNIST"),
    "ds_cnn": ((1, 49, 10), 10, "FSDD MFCC 49x10"),
    "mbv2": ((3, 32, 32), 10, "CIFAR-10"),
    "rnn": ((49, 10), 10, "FSDD MFCC 49x10 sequences"),
}
METRICS = (
    ("flash_bytes", 1024, "KiB"),
    ("sram_bytes", 1024, "KiB"),
    ("macs", 1e3, "thousand"),
    ("latency_ms", 1, "ms"),
)
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="stm32f446re")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = {}
    print(f"| family (dataset) | cost | minimum | 5% | median | 95% | maximum | fits {args.device} |")
    print("|---|---|---|---|---|---|---|---|")
    for name in search_space_names():
        shape, classes, dataset = DATASETS[name]
        space = get_search_space(name, shape, classes)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        candidates = [study.ask(space.distributions()).params for _ in range(args.samples)]
        t0 = time.perf_counter()
        report = space.cost_batch(candidates, args.device)
        seconds = time.perf_counter() - t0
        mins = space.minimum_costs(args.device)
        fits = float(report.feasible().mean())
        results[name] = {"dataset": dataset, "samples": args.samples, "cost_batch_s": seconds, "fits_fraction": fits}
        for i, (metric, unit, label) in enumerate(METRICS):
            values = getattr(report, metric)
            q = np.percentile(values, [5, 50, 95])
            results[name][metric] = {
                "minimum": mins[metric], "p5": q[0], "median": q[1], "p95": q[2], "max": values.max()
            }
            row = [mins[metric], *q, values.max()]
            cells = " | ".join(f"{v / unit:,.1f}" for v in row)
            first = f"{name} ({dataset})" if i == 0 else ""
            share = f"{100 * fits:.1f}% of samples" if i == 0 else ""
            print(f"| {first} | {metric.replace('_bytes', '').replace('_ms', '')} ({label}) | {cells} | {share} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_space_costs.json").write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
