"""hw_models' tflm profile against what the tflite export writes and the tflite-micro interpreter measures.

The benchmark (bench/hw_model_fidelity.py) reports the errors over 25 architectures;
these tests hold the properties that make them small: the families' convolutions are
TFLite SAME (no PAD op to cost), the planner reproduces TFLM's arena head to the byte,
the model-file count matches the file and the persistent tail the interpreter's (on this
64-bit host's struct sizes) within a few percent, and the two entry sizes that
bench/calibrate_model_file.py takes as measured are what the writer writes.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from tflite.BuiltinOperator import BuiltinOperator

from hw_models import estimate
from hw_models.runtimes import TFLM, TFLM_HOST_64
from search_spaces.families import get_search_space, same_conv_padding, same_output_size
from sparse_nas.export.tflite_format import _options, _Writer, dense_network, tflm_arena, write_tflite
from sparse_nas.export.tflite_graph import LoweredOp, lower_model
from sparse_nas.export.tflite_quant import quantize_graph

# Even sizes, so stride-2 layers are where torch's symmetric padding and SAME differ.
FAMILIES = {"sparse_cnn": (1, 16, 16), "ds_cnn": (1, 10, 8), "mbv2": (3, 16, 16)}
DEVICE = "rp2040"  # no DSP: no CMSIS-NN scratch, like the interpreter's reference kernels


def sampled(family: str, n: int, seed: int) -> list[tuple[object, dict]]:
    space = get_search_space(family, FAMILIES[family], 10)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [(space, space.sample(study.ask())) for _ in range(n)]


def exported(space, params: dict, seed: int = 0):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = space.build(params)
    x = torch.randn(32, *space.input_shape)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    graph = lower_model(model, space.input_shape)
    data = write_tflite(quantize_graph(graph, x.numpy()))
    network = dense_network(space.network_from_model(model, params))
    return graph, data, estimate(network, DEVICE, "tflm"), network


@pytest.mark.parametrize(("size", "kernel", "stride"), [(16, 3, 2), (15, 3, 2), (16, 5, 2), (16, 3, 1), (10, 4, 2)])
def test_same_conv_padding_gives_tflite_same(size, kernel, stride):
    pad, padding = same_conv_padding((size, size), kernel, stride)
    x = torch.randn(1, 1, size, size)
    conv = torch.nn.Conv2d(1, 1, kernel, stride, padding, bias=False)
    y = conv(pad(x) if pad is not None else x)
    assert y.shape[-1] == same_output_size(size, stride) == -(-size // stride)
    # SAME pads total // 2 before and the rest after: compare with that padding done by hand.
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    manual = torch.nn.functional.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    torch.testing.assert_close(y, torch.nn.functional.conv2d(manual, conv.weight, stride=stride))
    # Symmetric SAME stays the conv's own padding: the module is what it always was.
    assert (pad is None) == (total % 2 == 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_models_export_without_pad_ops(family):
    for space, params in sampled(family, 6, seed=3):
        graph = lower_model(space.build(params).eval(), space.input_shape)
        assert "pad" not in [op.kind for op in graph.ops], (family, params, graph.notes)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_predicted_arena_is_the_interpreters_head_and_file_size_and_tail_are_close(family):
    for space, params in sampled(family, 3, seed=11):
        _, data, predicted, network = exported(space, params)
        arena = tflm_arena(data)
        assert predicted.arena_bytes == arena["head_bytes"], (family, params)
        assert abs(predicted.model_bytes - len(data)) <= 0.03 * len(data), (family, params, predicted.model_bytes)
        # The interpreter runs on this 64-bit host: its tail has the LP64 struct sizes.
        host = estimate(network, DEVICE, TFLM_HOST_64)
        assert host.arena_bytes == predicted.arena_bytes
        assert abs(host.persistent_bytes - arena["tail_bytes"]) <= 0.03 * arena["tail_bytes"], (family, params)
        # The 32-bit MCU's tail has the same entries with 4-byte pointers: smaller.
        assert predicted.persistent_bytes < host.persistent_bytes


def _file_bytes(*, activations: int = 1, quantised: bool = True, operators: int = 0) -> int:
    """A one-subgraph file from the export's writer with the given number of entries."""
    w = _Writer()
    first = w.tensor("input", (1, 8, 8, 16), "int8", scales=[0.1], zero_points=[0])
    outputs = []
    for i in range(activations):
        quant = {"scales": [0.1], "zero_points": [0]} if quantised else {}
        outputs.append(w.tensor(f"block{i:02d}.dw", (1, 8, 8, 16), "int8", **quant))
    op = LoweredOp("conv2d", [0], 1, "block.conv", padding="SAME")
    for _ in range(operators):
        w.operator(0, [first, first, first], [outputs[0]], _options(w, op, 16))
    return len(w.finish([BuiltinOperator.CONV_2D], [first], [first], "sparse-nas"))


def test_model_file_entry_sizes():
    """The two entries bench/calibrate_model_file.py takes as measured rather than fitted.

    Flatbuffers align tables to 4 or 8 bytes, so single deltas alternate; their mean over
    several additions is the entry's size.
    """
    n = 6
    quantised = np.diff([_file_bytes(activations=k) for k in range(1, n + 2)]).mean()
    plain = np.diff([_file_bytes(activations=k, quantised=False) for k in range(1, n + 2)]).mean()
    # A quantisation table plus one channel's scale (float32) and zero point (int64).
    assert quantised - plain == pytest.approx(TFLM.quantization_bytes_per_tensor + 12, abs=4)
    # An Operator with a Conv2DOptions table and 4 tensor indices; the first one also
    # writes the options' vtable, so the steady state starts from the second.
    operators = np.diff([_file_bytes(activations=1, operators=k) for k in range(1, n + 2)]).mean()
    assert operators == pytest.approx(TFLM.metadata_bytes_per_op + 4 * TFLM.tensor_index_bytes, abs=4)
