"""The BaseCompressedLinear contract, checked for every registered compression method."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from hw_models import NetworkBuilder, estimate
from search_spaces.compression import BaseCompressedLinear, CompressedConv1x1, compression_methods, make_linear

IN, OUT = 24, 32
# Knobs that make each method a real compression of a 32 x 24 matrix.
KNOBS = {
    "dense": {},
    "magnitude_pruning": {"density": 0.3, "prune_at_init": True},
    "learned_threshold": {"density": 0.3},
    "low_rank": {"rank": 4},
    "kronecker": {},
    "hybrid_kronecker": {"dense_rows": 8},
    "doped_kronecker": {"doping_density": 0.05},
    "hmd": {"dense_rows": 8},
}


def test_every_registered_method_is_covered():
    assert set(compression_methods()) == set(KNOBS)


def build(method: str, seed: int = 0) -> BaseCompressedLinear:
    torch.manual_seed(seed)
    module = make_linear(method, IN, OUT, bias=True, **KNOBS[method])
    if hasattr(module, "prune_to"):
        module.prune_to()
    if method == "learned_threshold":
        # The threshold is learned from 0 (dense); place it where training would take it.
        with torch.no_grad():
            module.threshold.fill_(module.weight.abs().quantile(0.7).item())
    return module.eval()


@pytest.fixture(params=sorted(KNOBS))
def method(request) -> str:
    return request.param


@pytest.fixture
def layer(method) -> BaseCompressedLinear:
    return build(method)


def test_forward_equals_dense_reconstruction(layer):
    x = torch.randn(5, 3, IN)
    expected = x @ layer.dense_weight().T + layer.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_trainable_parameter(layer):
    layer.train()
    torch.manual_seed(1)
    layer(torch.randn(8, IN)).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_hardware_counts_match_the_module(layer):
    b = NetworkBuilder("one", (IN,), bits=8)
    b.linear(b.input, OUT, bias=False, structure=layer.weight_structure())
    report = estimate(b.build(), "stm32f446re", "ideal").layers[0]
    assert report.nonzero_params == layer.stored_parameters()
    assert layer.weight_spec().shape == (OUT, IN)
    assert report.macs <= OUT * IN


def test_compressed_methods_store_fewer_values(layer):
    if type(layer).__name__ != "DenseLinear":
        assert layer.stored_parameters() < IN * OUT


def test_pickle_and_deepcopy_preserve_outputs(layer):
    x = torch.randn(4, IN)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        torch.testing.assert_close(clone(x), layer(x))


def test_as_a_1x1_convolution(layer):
    conv = CompressedConv1x1(layer)
    x = torch.randn(2, IN, 5, 6)
    y = conv(x)
    assert y.shape == (2, OUT, 5, 6)
    torch.testing.assert_close(y[:, :, 2, 3], layer(x[:, :, 2, 3]))
    assert conv.weight_spec().shape == (OUT, 1, 1, IN)


def test_same_seed_same_initialisation(method):
    a, b = build(method, seed=7), build(method, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
