"""Benchmark of the hardware cost model (issue 2 goals).

- median microseconds to cost one network (the three reference networks),
- batch throughput in networks per second for a 6-layer CNN family (goal >= 100,000/s),
- import time of hw_models in a fresh interpreter (goal < 0.3 s, torch not imported).

Usage: .venv/bin/python bench/cost_model.py [--batch-size 100000] [--repeats 5]
Prints the figures and writes bench/results/cost_model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hw_models import NetworkBuilder, Sparse, estimate, estimate_batch, get_device
from hw_models.reference import REFERENCE_NETWORKS

RESULTS = Path(__file__).resolve().parent / "results"


def cnn6_family(n: int, seed: int) -> NetworkBuilder:
    """Six costed layers: 3 conv + max pool + 2 linear (flatten between), all numbers arrays."""
    rng = np.random.default_rng(seed)
    b = NetworkBuilder("cnn6", (28, 28, 1))
    x = b.input
    for i in range(3):
        x = b.conv2d(
            x,
            rng.choice([4, 8, 12, 16, 24, 32, 48, 64], n),
            rng.choice([1, 3, 5], n),
            stride=rng.choice([1, 2], n),
            activation="relu",
            weight_bits=rng.choice([4, 8], n),
            name=f"conv{i}",
        )
    x = b.max_pool2d(x, 2, name="pool")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, rng.choice([16, 32, 64, 128], n), structure=Sparse(rng.uniform(0.05, 1, n)), name="fc1")
    b.linear(x, 10, name="fc2")
    return b


def bench_single(repeats: int) -> dict[str, float]:
    device = get_device("stm32f446re")
    out = {}
    for name, make in REFERENCE_NETWORKS.items():
        net = make()
        estimate(net, device)
        times = []
        for _ in range(repeats * 40):
            t0 = time.perf_counter()
            estimate(net, device)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e6
    return out


def bench_batch(batch_size: int, repeats: int) -> dict[str, float]:
    device = get_device("stm32f446re")
    batch = cnn6_family(batch_size, seed=0).build_batch()
    estimate_batch(batch, device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        estimate_batch(batch, device)
        times.append(time.perf_counter() - t0)
    build_t0 = time.perf_counter()
    cnn6_family(batch_size, seed=1).build_batch()
    build_s = time.perf_counter() - build_t0
    best = min(times)
    return {
        "batch_size": batch_size,
        "median_s": statistics.median(times),
        "best_s": best,
        "networks_per_s": batch_size / statistics.median(times),
        "build_batch_s": build_s,
    }


def bench_import(repeats: int) -> dict[str, float | bool]:
    code = (
        "import time, sys; t = time.perf_counter(); import hw_models; "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    times, torch_loaded = [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        times.append(float(out[0]))
        torch_loaded |= out[1] == "True"
    return {"median_s": statistics.median(times), "max_s": max(times), "torch_imported": torch_loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    single = bench_single(args.repeats)
    batch = bench_batch(args.batch_size, args.repeats)
    imp = bench_import(args.repeats)
    for name, us in single.items():
        print(f"estimate({name}): median {us:,.0f} us")
    print(
        f"estimate_batch(cnn6 x {batch['batch_size']:,}): {batch['networks_per_s']:,.0f} networks/s "
        f"(median {batch['median_s']:.3f} s; goal >= 100,000/s); build_batch {batch['build_batch_s']:.3f} s"
    )
    print(f"import hw_models: median {imp['median_s']:.3f} s (goal < 0.3 s), torch imported: {imp['torch_imported']}")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "cost_model",
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "single_estimate_median_us": single,
        "batch": batch,
        "import": imp,
        "goals_met": {
            "batch_networks_per_s_ge_100k": batch["networks_per_s"] >= 100_000,
            "import_lt_0_3_s": imp["median_s"] < 0.3 and not imp["torch_imported"],
        },
    }
    path = RESULTS / "cost_model.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
