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
- ``arena``: head + persistent tail vs ``arena_bytes + persistent_bytes``. The
  interpreter runs on a 64-bit host, whose tail (pointers in TfLiteTensor, node and
  eval-tensor arrays) is larger than on a 32-bit MCU, so this row bounds, rather than
  measures, the MCU's tail.

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
    weighted = [op for op in graph.ops if op.weight is not None]
    return {
        "family": family,
        # What the file holds, for the fit of hw_models' flatbuffer constants (below).
        "file_tensors": len(graph.shapes)
        + 2 * len(weighted)
        + sum(op.kind in ("mean", "reshape", "pad") for op in graph.ops),
        "file_ops": len(graph.ops),
        # Per-channel quantisation of FULLY_CONNECTED (hw_models counts one set per array).
        "fc_extra_quant_sets": sum(2 * (op.weight.shape[0] - 1) for op in weighted if op.kind == "fully_connected"),
        "input_shape": list(shape),
        "params": params,
        "ops": len(graph.ops),
        "pad_ops": sum(op.kind == "pad" for op in graph.ops),
        "measured_model_bytes": len(data),
        "predicted_model_bytes": cost.model_bytes,
        "measured_head_bytes": arena["head_bytes"],
        "predicted_arena_bytes": cost.arena_bytes,
        "measured_arena_bytes": arena["total_bytes"],
        "measured_tail_bytes": arena["tail_bytes"],
        "predicted_persistent_bytes": cost.persistent_bytes,
        "predicted_arena_plus_persistent_bytes": cost.arena_bytes + cost.persistent_bytes,
    }


def _errors(rows: list[dict], measured: str, predicted: str) -> dict:
    rel = np.array([(r[predicted] - r[measured]) / r[measured] for r in rows])
    return {
        "mean_abs_rel_error": float(np.abs(rel).mean()),
        "max_abs_rel_error": float(np.abs(rel).max()),
        "mean_signed_rel_error": float(rel.mean()),
    }


def _fit_flatbuffer_constants(rows: list[dict]) -> dict:
    """Per-tensor, per-op and constant bytes that best explain the .tflite size residual (in-sample fit)."""
    measured = np.array([r["measured_model_bytes"] for r in rows], dtype=float)
    predicted = np.array([r["predicted_model_bytes"] + 12 * r["fc_extra_quant_sets"] for r in rows], dtype=float)
    features = np.array([[r["file_tensors"], r["file_ops"], 1.0] for r in rows])
    coef, *_ = np.linalg.lstsq(features, measured - predicted, rcond=None)
    rel = (predicted + features @ coef - measured) / measured
    return {
        "bytes_per_file_tensor": float(coef[0]),
        "bytes_per_file_op": float(coef[1]),
        "bytes_constant": float(coef[2]),
        "mean_abs_rel_error": float(np.abs(rel).mean()),
        "max_abs_rel_error": float(np.abs(rel).max()),
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
        "arena": ("measured_arena_bytes", "predicted_arena_plus_persistent_bytes"),
    }
    # PAD ops are the export's, not the IR's (torch pads where TFLite SAME cannot): the
    # subset without them isolates the planner and constants from that mismatch.
    subsets = {"all": rows, "without PAD ops": [r for r in rows if r["pad_ops"] == 0]}
    summary = {
        subset: {"architectures": len(chosen)} | {name: _errors(chosen, *cols) for name, cols in comparisons.items()}
        for subset, chosen in subsets.items()
    }
    print(f"{len(rows)} architectures on {DEVICE} ({time.perf_counter() - start:.0f} s)\n")
    print("| architectures | quantity | measured | predicted | mean abs rel error | max abs rel error | mean signed |")
    print("|---|---|---|---|---|---|---|")
    for subset in subsets:
        for name, (m, p) in comparisons.items():
            s = summary[subset][name]
            print(
                f"| {subset} ({summary[subset]['architectures']}) | {name} | {m} | {p} "
                f"| {100 * s['mean_abs_rel_error']:.1f}% | {100 * s['max_abs_rel_error']:.1f}% "
                f"| {100 * s['mean_signed_rel_error']:+.1f}% |"
            )
    header = (
        "| family | input | ops (pad) | .tflite B | predicted | head B | predicted arena | total B "
        "| pred. + persistent |"
    )
    print("\n" + header)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['family']} | {'x'.join(map(str, r['input_shape']))} | {r['ops']} ({r['pad_ops']}) "
            f"| {r['measured_model_bytes']:,} | {r['predicted_model_bytes']:,} | {r['measured_head_bytes']:,} "
            f"| {r['predicted_arena_bytes']:,} | {r['measured_arena_bytes']:,} "
            f"| {r['predicted_arena_plus_persistent_bytes']:,} |"
        )
    fit = _fit_flatbuffer_constants(rows)
    print(
        f"\nLeast-squares fit of the .tflite residual (measured - predicted) after adding 12 B per extra "
        f"FULLY_CONNECTED quantisation set: {fit['bytes_per_file_tensor']:.1f} B per tensor, "
        f"{fit['bytes_per_file_op']:.1f} B per op, {fit['bytes_constant']:.0f} B constant; "
        f"max abs rel error of the corrected prediction {100 * fit['max_abs_rel_error']:.1f}% "
        f"(mean {100 * fit['mean_abs_rel_error']:.1f}%)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = {"device": DEVICE, "runtime": "tflm", "summary": summary, "model_bytes_fit": fit, "architectures": rows}
    (RESULTS / "hw_model_fidelity.json").write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
