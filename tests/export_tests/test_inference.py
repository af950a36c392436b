"""Contract of ``to_inference_module`` and the ONNX export, for every family and every compression method.

Untrained (seeded) models: the rewrite must compute what the model computes, whatever
the weights. Quantisation-aware models are calibrated on one batch first, and compared
with their activation quantisers off (the float export keeps activations float) but their
weight quantisation on (the export bakes the quantised weights in).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
from torch import nn

from search_spaces.families import (
    METHODS,
    BaseSearchSpace,
    InvalidSearchSpaceError,
    get_search_space,
    search_space_names,
)
from search_spaces.quantization import quantized_layers
from sparse_nas.export import to_inference_module
from sparse_nas.export.onnx_format import INPUT_NAME, OUTPUT_NAME, export_float_onnx

IMAGE_SHAPE, SEQUENCE_SHAPE = (1, 8, 8), (8, 10)


def small_space(name: str, options: dict | None = None) -> BaseSearchSpace:
    """The family on a small image input, or a short sequence for recurrent families."""
    try:
        return get_search_space(name, IMAGE_SHAPE, 10, options)
    except InvalidSearchSpaceError:
        return get_search_space(name, SEQUENCE_SHAPE, 10, options)


def points(space: BaseSearchSpace, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def calibrated(space: BaseSearchSpace, params: dict, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """The seeded model, its quantisers calibrated on one batch and their activation rounding off, in eval mode."""
    torch.manual_seed(seed)
    model = space.build(params)
    x = torch.randn(16, *space.input_shape)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    for layer in quantized_layers(model):
        layer.input_quantizer.fake_quant_enabled = False
    return model, x


def _standard(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn")


def _holds_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


@pytest.fixture(params=search_space_names())
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def test_inference_module_computes_what_the_model_computes_with_standard_layers(family):
    space = small_space(family)
    for seed, params in enumerate([space.smallest(), *points(space, 3)]):
        model, x = calibrated(space, params, seed)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        inference = to_inference_module(model)
        with torch.no_grad():
            torch.testing.assert_close(inference(x), model(x), rtol=1e-5, atol=1e-5)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model is left untouched"
        # Family containers (blocks, the recurrent loop) stay; every layer holding weights is torch's own.
        custom = {type(m).__name__ for m in inference.modules() if _holds_weights(m) and not _standard(m)}
        assert not custom, f"{family} {params}: layers with weights of custom types left: {custom}"


def test_quantised_weights_are_baked_in(family):
    space = small_space(family)
    model, _ = calibrated(space, space.smallest(), 0)
    layers = quantized_layers(model)
    assert layers, "int8 points are trained quantisation-aware"
    inference = to_inference_module(model)
    classifier = dict(inference.named_modules())[_classifier_name(model)]
    wrapped = dict(model.named_modules())[_classifier_name(model)]
    torch.testing.assert_close(classifier.weight, wrapped.quantized_weights()["weight"], rtol=0, atol=0)
    scale = wrapped.weight_scales()["weight"].unsqueeze(1)
    codes = classifier.weight / scale
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)


def _classifier_name(model: nn.Module) -> str:
    return next(name for name, _ in model.named_modules() if name.endswith("classifier"))


def _onnx_logits(model: nn.Module, input_shape: tuple[int, ...], x: torch.Tensor, tmp_path) -> np.ndarray:
    path = tmp_path / "model.onnx"
    export_float_onnx(model, input_shape, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    return logits


def test_onnx_export_runs_in_onnxruntime_like_the_model(family, tmp_path):
    space = small_space(family)
    for seed, params in enumerate(points(space, 2, seed=1)):
        model, x = calibrated(space, params, seed)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(_onnx_logits(model, space.input_shape, x, tmp_path), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_compression_method_exports_as_its_dense_equivalent(method, tmp_path):
    space = small_space("sparse_cnn", {"methods": [method], "dense_units": [16, 32]})
    params = space.smallest() | {"n_dense": 2, "dense0_level": 2, "dense1_level": 3}
    model, x = calibrated(space, params, 0)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_onnx_logits(model, space.input_shape, x, tmp_path), expected, rtol=1e-4, atol=1e-4)
