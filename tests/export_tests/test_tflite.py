"""The ``tflite`` format: lowering, int8 quantisation, the flatbuffer in the tflite-micro interpreter, the C array.

The interpreter is the independent reference: every exported model is run in it and its
int8 outputs must equal, bit for bit, those of the numpy integer reference
(``int8_forward``) of the same quantised graph. Untrained seeded models of every CNN
family and every compression method are used (the rewrite must hold whatever the
weights); the digits job of conftest.py checks a trained model end to end.
"""

from __future__ import annotations

import json
import subprocess
import zipfile

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from search_spaces.families import METHODS, BaseSearchSpace, get_search_space
from sparse_nas.export import export_trial, get_format, to_inference_module
from sparse_nas.export.tflite_format import (
    C_ARRAY_NAME,
    c_array_files,
    tflm_arena,
    tflm_outputs,
    to_int8_input,
    write_tflite,
)
from sparse_nas.export.tflite_graph import UnsupportedTFLiteLayerError, float_forward, lower_model
from sparse_nas.export.tflite_quant import int8_forward, quantize_graph

CNN_FAMILIES = {"sparse_cnn": (1, 16, 16), "ds_cnn": (1, 9, 8), "mbv2": (3, 16, 16)}


def space_of(family: str) -> BaseSearchSpace:
    return get_search_space(family, CNN_FAMILIES[family], 10)


def points(space: BaseSearchSpace, n: int, seed: int = 0) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def calibrated(space: BaseSearchSpace, params: dict, seed: int) -> tuple[nn.Module, np.ndarray]:
    """The seeded model in eval mode, batch-norm statistics and QAT quantisers set on one random batch."""
    torch.manual_seed(seed)
    model = space.build(params)
    x = torch.randn(64, *space.input_shape)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    return model, x.numpy()


def tflm_matches_reference(model: nn.Module, input_shape: tuple[int, ...], x: np.ndarray) -> tuple[bytes, dict]:
    """Export ``model`` and check the interpreter against the integer reference on ``x``; returns the model."""
    graph = lower_model(model, input_shape)
    qg = quantize_graph(graph, x)
    data = write_tflite(qg)
    xq = to_int8_input(qg, x[:16])
    expected = int8_forward(qg, xq).reshape(len(xq), -1)
    got = tflm_outputs(data, xq)
    np.testing.assert_array_equal(got, expected)
    return data, {"graph": graph, "qg": qg}


@pytest.mark.parametrize("family", sorted(CNN_FAMILIES))
def test_every_cnn_family_runs_in_tflite_micro_exactly_as_the_integer_reference(family):
    torch.set_num_threads(1)
    space = space_of(family)
    for i, params in enumerate(points(space, 3, seed=1)):
        model, x = calibrated(space, params, seed=i)
        data, parts = tflm_matches_reference(model, space.input_shape, x)
        assert data[4:8] == b"TFL3"
        # The lowered float graph computes what the model computes (NHWC, BN folded, pads explicit).
        graph = parts["graph"]
        expected = to_inference_module(model)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(float_forward(graph, x)[graph.output], expected, rtol=1e-4, atol=1e-4)
        # ... and the int8 model stays close to it: dequantised logits within a few output steps.
        qg = parts["qg"]
        out_q = qg.qparams[graph.output]
        dequantised = out_q.dequantize(tflm_outputs(data, to_int8_input(qg, x[:16])))
        spread = np.abs(expected[:16]).max()
        assert np.abs(dequantised - expected[:16]).max() < 0.25 * spread + 4 * out_q.scale


@pytest.mark.parametrize("method", METHODS)
def test_every_compression_method_is_exported_as_its_dense_equivalent(method):
    torch.set_num_threads(1)
    space = get_search_space("ds_cnn", (1, 9, 8), 10, {"methods": [method], "max_blocks": 2})
    params = points(space, 1, seed=3)[0]
    model, x = calibrated(space, params, seed=0)
    _, parts = tflm_matches_reference(model, space.input_shape, x)
    assert {op.kind for op in parts["graph"].ops} <= {
        "conv2d",
        "depthwise_conv2d",
        "fully_connected",
        "mean",
        "add",
        "pad",
    }


def test_hand_built_ops_pools_reshape_and_softmax():
    """Max / average pooling, a flatten of a 2x2 map (NHWC reshape, classifier columns permuted), softmax."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU6(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
        nn.Softmax(dim=-1),
    ).eval()
    x = torch.randn(64, 2, 8, 8)
    graph = lower_model(model, (2, 8, 8))
    assert [op.kind for op in graph.ops] == [
        "conv2d",
        "max_pool2d",
        "conv2d",
        "avg_pool2d",
        "reshape",
        "fully_connected",
        "softmax",
    ]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(float_forward(graph, x.numpy())[graph.output], expected, rtol=1e-5, atol=1e-6)
    qg = quantize_graph(graph, x.numpy())
    data = write_tflite(qg)
    xq = to_int8_input(qg, x.numpy()[:16])
    got = tflm_outputs(data, xq)
    # The integer reference takes softmax in float: one output step apart at most.
    assert np.abs(got.astype(int) - int8_forward(qg, xq).astype(int)).max() <= 1
    probabilities = qg.qparams[graph.output].dequantize(got)
    assert np.abs(probabilities - expected[:16]).max() < 0.05


@pytest.mark.parametrize(
    ("model", "shape", "match"),
    [
        (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)), (4, 8, 8), "grouped convolution"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Upsample(scale_factor=2)), (1, 8, 8), "Upsample has no TFLite Micro"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh()), (1, 8, 8), "Tanh has no TFLite Micro"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2)), (1, 8, 8), "adaptive pooling"),
        (nn.Sequential(nn.Linear(8, 4)), (8, 10), "takes \\(C, H, W\\) images"),
    ],
)
def test_layers_without_tflite_micro_kernels_raise_a_clear_error(model, shape, match):
    with pytest.raises(UnsupportedTFLiteLayerError, match=match):
        lower_model(model.eval(), shape)


def test_mbv2_at_a_lower_resolution_takes_the_resized_image():
    """The deployed model's input is the image at the searched resolution; the export resizes as the model did."""
    torch.set_num_threads(1)
    space = get_search_space("mbv2", (3, 16, 16), 10, {"resolution_scales": [0.5]})
    model, x = calibrated(space, points(space, 1)[0], seed=0)
    _, parts = tflm_matches_reference(model, space.input_shape, x)
    graph = parts["graph"]
    assert graph.input_resize == (8, 8)
    assert graph.shapes[graph.input] == (8, 8, 3)
    expected = to_inference_module(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(float_forward(graph, x)[graph.output], expected, rtol=1e-4, atol=1e-4)


def test_c_array_compiles_with_gcc_and_holds_the_model_bytes(tmp_path):
    space = space_of("ds_cnn")
    model, x = calibrated(space, points(space, 1, seed=2)[0], seed=0)
    data = write_tflite(quantize_graph(lower_model(model, space.input_shape), x))
    source, header = c_array_files(data)
    (tmp_path / "model_data.cc").write_text(source)
    (tmp_path / "model_data.h").write_text(header)
    (tmp_path / "main.cc").write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "model_data.h"\n'
        "int main() {\n"
        f"  if (reinterpret_cast<std::uintptr_t>({C_ARRAY_NAME}) % 16 != 0) return 3;\n"
        f"  fwrite({C_ARRAY_NAME}, 1, {C_ARRAY_NAME}_len, stdout);\n  return 0;\n}}\n"
    )
    subprocess.run(
        ["gcc", "-std=c++17", "-Wall", "-Werror", "-c", "model_data.cc", "-o", "model_data.o"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["g++", "-Wall", "-Werror", "main.cc", "model_data.o", "-o", "dump"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    dumped = subprocess.run([str(tmp_path / "dump")], check=True, capture_output=True).stdout
    assert dumped == data


def test_arena_record_is_captured_and_adds_up():
    space = space_of("sparse_cnn")
    model, x = calibrated(space, points(space, 1, seed=4)[0], seed=0)
    graph = lower_model(model, space.input_shape)
    arena = tflm_arena(write_tflite(quantize_graph(graph, x)))
    assert arena["total_bytes"] == arena["head_bytes"] + arena["tail_bytes"]
    # The planned head holds at least the largest activation tensor (int8, one byte per element).
    largest = max(int(np.prod(s)) for s in graph.shapes)
    assert arena["head_bytes"] >= largest
    assert any("RecordingMicroAllocator" in line for line in arena["record"])


def test_format_is_registered_with_a_one_point_tolerance():
    fmt = get_format("tflite")
    assert fmt.tolerance_pp == 1.0


@pytest.mark.slow
def test_export_of_the_digits_job_matches_pytorch_within_one_point(service_job, finalized, tmp_path):
    torch.set_num_threads(1)
    number = service_job.best.number
    result = export_trial(service_job.source(), number, "tflite", export_dir=service_job.export_dir)
    names = set(zipfile.ZipFile(result.path).namelist())
    assert names == {"manifest.json", "model.tflite", "model_data.cc", "model_data.h"}
    manifest = json.loads(zipfile.ZipFile(result.path).read("manifest.json"))
    check, details = manifest["check"], manifest["format_details"]
    assert check["within_tolerance"], check
    assert abs(check["delta_pp"]) <= 1.0
    assert details["reference_match"]["max_abs_diff_lsb"] == 0
    assert details["arena"]["total_bytes"] == details["arena"]["head_bytes"] + details["arena"]["tail_bytes"]
    assert details["model_bytes"] == manifest["files"]["model.tflite"]["bytes"]
    # sparse_cnn convs are magnitude-pruned: stored dense, each listed with what that costs.
    expanded = details["expanded_layers"]
    assert expanded, "pruned convs are expanded"
    assert details["expansion_note"]
    for row in expanded:
        assert row["structures"]["weight"]["kind"] != "dense"
        assert row["expanded_model_bytes"] >= row["stored_model_bytes"]
        assert row["expanded_macs"] >= row["stored_macs"]
