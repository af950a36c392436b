"""Fit the tflm runtime profile's model-file constants to the .tflite files the export writes.

hw_models.model_file counts what a TFLite flatbuffer holds entry by entry. Some sizes are
fixed by the schema and are not fitted: 4 B per shape entry and per operator index,
12 B per quantisation channel (float32 scale + int64 zero point), data aligned to 16 B.
The rest (the fixed header, a Tensor entry with its name, a quantisation table, a
Buffer, an Operator with its options, an OperatorCode) depend on the flatbuffer layout
and on the export's tensor names, so they are fitted here by least squares on exported
architectures, then rounded to whole bytes.

The architectures are drawn from the same settings as bench/hw_model_fidelity.py with
other seeds (100 and up), so that benchmark evaluates the constants on models the fit
never saw.

Usage: .venv/bin/python bench/calibrate_model_file.py [--n-per-family N]
Prints the constants and writes bench/results/calibrate_model_file.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import optuna
import torch
from hw_model_fidelity import DEVICE, RESULTS, SETTINGS
from scipy.optimize import nnls

from hw_models import estimate
from hw_models.runtimes import TFLM
from search_spaces.families import get_search_space
from sparse_nas.export.tflite_format import dense_network, write_tflite
from sparse_nas.export.tflite_graph import lower_model
from sparse_nas.export.tflite_quant import quantize_graph

FITTED = ("model_header_bytes", "metadata_bytes_per_tensor", "buffer_bytes_per_array", "metadata_bytes_per_op_kind")
# Every op writes one tensor and every tensor is the input, an op's output or a stored
# array, so sizes alone cannot tell an Operator entry from a Tensor entry, nor (all but
# the few MEAN axes being quantised) a quantisation table from a Tensor entry. These two
# are measured instead, on files the export's writer makes with one entry more or less
# (tests/export_tests/test_tflite.py::test_model_file_entry_sizes checks them), and the
# fit sets the others around them.
MEASURED = {
    # A 1-channel activation costs 36 B more with its quantisation than without: the
    # QuantizationParameters table and its vectors' length prefixes, plus 12 B of data.
    "quantization_bytes_per_tensor": 24,
    # An Operator with a Conv2DOptions table and 4 tensor indices costs 56-64 B, 16 of
    # them the indices.
    "metadata_bytes_per_op": 44,
}
SEED_OFFSET = 100  # bench/hw_model_fidelity.py samples with seeds 0-4


def _predicted(network, **constants: int) -> int:
    profile = dataclasses.replace(TFLM, **dict.fromkeys(FITTED, 0) | MEASURED | constants)
    return estimate(network, DEVICE, profile).model_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-family", type=int, default=12, help="architectures per setting (default 12)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    measured, base, features = [], [], []
    for k, (family, shape, options) in enumerate(SETTINGS):
        space = get_search_space(family, shape, 10, options)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SEED_OFFSET + k))
        for i in range(args.n_per_family):
            params = space.sample(study.ask())
            torch.manual_seed(i)
            model = space.build(params).eval()
            x = torch.randn(16, *shape)
            measured.append(len(write_tflite(quantize_graph(lower_model(model, shape), x.numpy()))))
            network = dense_network(space.network_from_model(model, params))
            # The prediction is linear in the fitted constants: probe each with 1 byte.
            zero = _predicted(network)
            base.append(zero)
            features.append([_predicted(network, **{name: 1}) - zero for name in FITTED])
    y = np.array(measured, dtype=float) - np.array(base, dtype=float)
    x = np.array(features, dtype=float)
    coef, _ = nnls(x, y)  # every entry has a size >= 0
    constants = {name: round(float(c)) for name, c in zip(FITTED, coef, strict=True)}
    predicted = np.array(base) + x @ np.array([constants[n] for n in FITTED])
    rel = (predicted - np.array(measured)) / np.array(measured)
    result = {
        "device": DEVICE,
        "architectures": len(measured),
        "seconds": round(time.perf_counter() - start, 1),
        "constants": constants | MEASURED,
        "in_sample_mean_abs_rel_error": float(np.abs(rel).mean()),
        "in_sample_max_abs_rel_error": float(np.abs(rel).max()),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibrate_model_file.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
