"""How well hw_models predicts real TFLite Micro models: .tflite size and arena, measured vs predicted.

For architectures sampled from sparse_cnn, ds_cnn and mbv2 (several input sizes and
width ranges; seeded random weights: sizes and arenas do not depend on the values), each
model is exported by the ``tflite`` format's writer and run once in the tflite-micro
interpreter, whose allocation record gives the arena. The prediction is
``hw_models.estimate`` of the network the file holds (the trained network with every
weight dense, ``tflite_format.dense_network``) on the RP2040: a core without the DSP
extension, so TFLM's reference kernels (the interpreter's) and no CMSIS-NN scratch.

Compared:
- ``model``: the .tflite file's bytes vs ``model_bytes``;
- ``head``: the arena's planned head vs ``arena_bytes``;
- ``tail``: the persistent tail vs ``persistent_bytes`` of ``runtimes.TFLM_HOST_64``,
  the tflm profile with the struct sizes of the 64-bit host the interpreter runs on
  (the 32-bit ``tflm`` profile shares the structure, with 4-byte pointers);
- ``arena``: head + tail vs ``arena_bytes + persistent_bytes`` on that host profile.

Usage: .venv/bin/python bench/hw_model_fidelity.py [--n-per-family N]
Prints a markdown table and writes bench/results/hw_model_fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from hw_models import estimate
from hw_models.runtimes import TFLM_HOST_64
from search_spaces.families import get_search_space
from sparse_nas.export.tflite_format import dense_network, tflm_arena, write_tflite
from sparse_nas.export.tflite_graph import lower_model
from sparse_nas.export.tflite_quant import quantize_graph

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = "rp2040"
# (family, input shape, options): small and large variants of each family.
SETTINGS = (
    ("sparse_cnn", (1, 28, 28), {"channels": [4, 32]}),
    ("sparse_cnn", (3, 32, 32), {"channels": [16, 64]}),
    ("ds_cnn", (1, 49, 10), {"channels": [8, 64], "max_blocks": 4}),
    ("ds_cnn", (1, 49, 10), {"channels": [32, 128], "max_blocks": 6}),
    ("mbv2", (3, 32, 32), {"width_multipliers": [0.25, 0.35, 0.5]}),
)


def measure(family: str, shape: tuple[int, ...], options: dict, params: dict, seed: int) -> dict:
    space = get_search_space(family, shape, 10, options)
    torch.manual_seed(seed)
    model = space.build(params)
    x = torch.randn(16, *shape)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    graph = lower_model(model, shape)
    data = write_tflite(quantize_graph(graph, x.numpy()))
    arena = tflm_arena(data)
    network = dense_network(space.network_from_model(model, params))
    cost = estimate(network, DEVICE, "tflm")
    host = estimate(network, DEVICE, TFLM_HOST_64)
    return {
        "family": family,
        "input_shape": list(shape),
        "params": params,
        "ops": len(graph.ops),
        "pad_ops": sum(op.kind == "pad" for op in graph.ops),
        "measured_model_bytes": len(data),
        "predicted_model_bytes": cost.model_bytes,
        "measured_head_bytes": arena["head_bytes"],
        "predicted_arena_bytes": cost.arena_bytes,
        "measured_tail_bytes": arena["tail_bytes"],
        "predicted_host_persistent_bytes": host.persistent_bytes,
        "measured_arena_bytes": arena["total_bytes"],
        "predicted_host_arena_plus_persistent_bytes": host.arena_bytes + host.persistent_bytes,
        # What the 32-bit MCU would need by the same structure (not measurable here).
        "predicted_mcu_persistent_bytes": cost.persistent_bytes,
    }


def _errors(rows: list[dict], measured: str, predicted: str) -> dict:
    rel = np.array([(r[predicted] - r[measured]) / r[measured] for r in rows])
    return {
        "mean_abs_rel_error": float(np.abs(rel).mean()),
        "max_abs_rel_error": float(np.abs(rel).max()),
        "mean_signed_rel_error": float(rel.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-family", type=int, default=5, help="architectures per setting (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    start = time.perf_counter()
    for k, (family, shape, options) in enumerate(SETTINGS):
        space = get_search_space(family, shape, 10, options)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=k))
        for i in range(args.n_per_family):
            params = space.sample(study.ask())
            rows.append(measure(family, shape, options, params, seed=i))
    comparisons = {
        "model": ("measured_model_bytes", "predicted_model_bytes"),
        "head": ("measured_head_bytes", "predicted_arena_bytes"),
        "tail": ("measured_tail_bytes", "predicted_host_persistent_bytes"),
        "arena": ("measured_arena_bytes", "predicted_host_arena_plus_persistent_bytes"),
    }
    summary = {"architectures": len(rows), "pad_ops": sum(r["pad_ops"] for r in rows)} | {
        name: _errors(rows, *cols) for name, cols in comparisons.items()
    }
    seconds = time.perf_counter() - start
    print(f"{len(rows)} architectures on {DEVICE} ({seconds:.0f} s); PAD ops: {summary['pad_ops']}\n")
    print("| quantity | measured | predicted | mean abs rel error | max abs rel error | mean signed |")
    print("|---|---|---|---|---|---|")
    for name, (m, p) in comparisons.items():
        s = summary[name]
        print(
            f"| {name} | {m} | {p} | {100 * s['mean_abs_rel_error']:.1f}% | {100 * s['max_abs_rel_error']:.1f}% "
            f"| {100 * s['mean_signed_rel_error']:+.1f}% |"
        )
    print("\n| family | input | ops | .tflite B | predicted | head B | predicted arena | tail B | predicted (64-bit) "
          "| predicted (32-bit MCU) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['family']} | {'x'.join(map(str, r['input_shape']))} | {r['ops']} "
            f"| {r['measured_model_bytes']:,} | {r['predicted_model_bytes']:,} | {r['measured_head_bytes']:,} "
            f"| {r['predicted_arena_bytes']:,} | {r['measured_tail_bytes']:,} "
            f"| {r['predicted_host_persistent_bytes']:,} | {r['predicted_mcu_persistent_bytes']:,} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {"device": DEVICE, "runtime": "tflm", "host_runtime": TFLM_HOST_64.name, "summary": summary}
    out["architectures"] = rows
    (RESULTS / "hw_model_fidelity.json").write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
