"""Fake quantisation, QAT (STE and alpha-blending), PTQ and ternary weights."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from search_spaces.compression._dense import DenseLinear
from search_spaces.compression._pruning import LearnedThresholdLinear, MagnitudePrunedLinear
from search_spaces.errors import InvalidCompressionError
from search_spaces.quantization import (
    ActivationFakeQuantizer,
    QuantizedLayer,
    prepare_qat,
    quantize_post_training,
    quantize_weight_per_channel,
    quantized_layers,
    set_alpha,
    ternarize,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_per_channel_scales_and_error_bound() -> None:
    w = torch.randn(7, 5, 3) * torch.linspace(0.01, 3.0, 7)[:, None, None]
    w_q, scale = quantize_weight_per_channel(w, 8)
    torch.testing.assert_close(scale, w.abs().flatten(1).amax(dim=1) / 127)
    assert torch.all((w_q - w).abs() <= scale[:, None, None] / 2 + 1e-7)
    codes = w_q / scale[:, None, None]
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert codes.round().abs().max() == 127  # the largest |w| of each row maps to 127
    assert torch.unique(w_q[3]).numel() <= 255


def test_all_zero_row_quantises_to_zero() -> None:
    w = torch.zeros(2, 4)
    w[1] = torch.tensor([0.5, -1.0, 0.25, 0.0])
    w_q, scale = quantize_weight_per_channel(w)
    assert torch.all(w_q[0] == 0) and scale[0] == 1.0
    torch.testing.assert_close(scale[1], torch.tensor(1.0 / 127))


def test_ste_passes_gradients_to_weights_and_inputs() -> None:
    layer = prepare_qat(nn.Linear(6, 4), activation_bits=8)
    x = torch.rand(10, 6, requires_grad=True)  # inside the observed range: no clipping
    layer.train()
    layer(x).sum().backward()
    # d/dW sum(x_q W_q^T) = sum over the batch of x_q, for every row (STE: dW_q/dW = 1).
    x_q = layer.input_quantizer(x.detach())
    torch.testing.assert_close(layer.module.weight.grad, x_q.sum(0).expand(4, 6))
    w_q = layer.quantized_weights()["weight"].detach()
    torch.testing.assert_close(x.grad, w_q.sum(0).expand(10, 6))


def test_activation_observer_converges_to_the_data_range() -> None:
    q = ActivationFakeQuantizer(momentum=0.05)
    q.train()
    for _ in range(300):
        q(torch.rand(256) * 4.0 - 1.0)  # U(-1, 3)
    assert float(q.min_val) == pytest.approx(-1.0, abs=0.02)
    assert float(q.max_val) == pytest.approx(3.0, abs=0.02)
    assert q.scale == pytest.approx(4.0 / 255, rel=0.02)
    # zero point: the code of 0.0 is qmin - min / scale = -128 + 1 / (4 / 255) ~ -64.
    assert q.zero_point == pytest.approx(-64, abs=1)
    x = torch.tensor([0.0, 1.0, 5.0])
    y = q.eval()(x)
    assert y[0] == 0.0  # zero exactly representable
    assert y[2] == pytest.approx((127 - q.zero_point) * q.scale)  # clipped at the top


def test_activation_quantiser_before_calibration() -> None:
    q = ActivationFakeQuantizer().eval()
    x = torch.randn(3)
    assert torch.equal(q(x), x)
    with pytest.raises(InvalidCompressionError, match="no range"):
        _ = q.scale


def test_activation_gradient_is_zero_outside_the_range() -> None:
    q = ActivationFakeQuantizer()
    q.train()
    q(torch.tensor([-1.0, 1.0]))
    q.eval()
    x = torch.tensor([-2.0, 0.3, 2.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_alpha_blending_endpoints() -> None:
    float_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model = prepare_qat(copy.deepcopy(float_model), weight_method="alpha_blend", activation_bits=None)
    ste = prepare_qat(copy.deepcopy(float_model), weight_method="ste", activation_bits=None)
    x = torch.randn(5, 8)
    assert all(layer.alpha == 0.0 for layer in quantized_layers(model))
    torch.testing.assert_close(model(x), float_model(x))
    set_alpha(model, 1.0)
    torch.testing.assert_close(model(x), ste(x))
    assert not torch.allclose(ste(x), float_model(x))
    # Gradients flow only through (1 - alpha) w (arXiv 1903.01061): d sum(x W_ab^T) / dW = 0.75 sum_batch x.
    layer = prepare_qat(nn.Linear(8, 3), weight_method="alpha_blend", activation_bits=None)
    layer.set_alpha(0.25)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.module.weight.grad, 0.75 * x.sum(0).expand(3, 8))
    with pytest.raises(InvalidCompressionError, match="alpha"):
        set_alpha(model, 1.5)


def test_ternary_weights_take_exactly_three_values() -> None:
    w = torch.randn(12, 20)
    w_t, alpha = ternarize(w)
    values = torch.unique(w_t)
    delta = 0.7 * w.abs().mean()
    assert values.numel() == 3
    torch.testing.assert_close(alpha, w.abs()[w.abs() > delta].mean())
    torch.testing.assert_close(values, torch.stack([-alpha, torch.tensor(0.0), alpha]))
    model = prepare_qat(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), bits=2)
    for layer in quantized_layers(model):
        assert torch.unique(layer.quantized_weights()["weight"].detach()).numel() == 3


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_post_training_quantisation_keeps_digits_accuracy() -> None:
    x_train, y_train, x_test, y_test = _digits()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), DenseLinear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        idx = torch.randint(0, len(y_train), (64,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    float_acc = _accuracy(model, x_test, y_test)
    quantized = quantize_post_training(model, x_train.split(200))
    quant_acc = _accuracy(quantized, x_test, y_test)
    assert float_acc > 0.9
    assert abs(quant_acc - float_acc) <= 0.02
    assert not quantized.training and isinstance(model[0], nn.Linear)  # original untouched
    assert quantized[2].weight_spec().bits == 8
    first = quantized[0].input_quantizer
    assert first.scale == pytest.approx(1.0 / 255) and first.zero_point == -128  # inputs span [0, 1]
    assert not torch.equal(quantized(x_test), model(x_test))


def test_compressed_layers_are_quantised_and_report_bits() -> None:
    pruned = MagnitudePrunedLinear(16, 8, density=0.25, prune_at_init=True)
    learned = LearnedThresholdLinear(8, 8)
    model = prepare_qat(nn.Sequential(pruned, nn.ReLU(), learned), bits=8)
    assert [type(layer.module) for layer in quantized_layers(model)] == [MagnitudePrunedLinear, LearnedThresholdLinear]
    assert model[0].weight_spec().bits == 8 and model[2].weight_bits == 8
    assert model[2].weight_names == ["weight"]  # the 0-D threshold is not a stored weight
    model.eval()
    x = torch.randn(4, 16)
    model(x)  # no range yet in eval: activations pass, weights quantised
    w_q = model[0].quantized_weights()["weight"]
    expected = nn.functional.linear(x, w_q * pruned.mask, pruned.bias)
    torch.testing.assert_close(model[0](x), expected)
    assert int((model[0].module.dense_weight() != 0).sum()) == 32  # mask untouched
    assert model[0].in_features == 16 and model[0].density == pytest.approx(0.25)  # delegated attributes
    ternary = prepare_qat(nn.Sequential(MagnitudePrunedLinear(8, 4)), bits=2)
    assert ternary[0].weight_spec().bits == 2


def test_quantised_model_pickles_and_deepcopies() -> None:
    model = prepare_qat(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))
    x = torch.randn(3, 1, 4, 4)
    model.train()
    model(x)
    model.eval()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), model(x))
        assert isinstance(clone[0], QuantizedLayer)


def test_bad_quantisation_arguments() -> None:
    with pytest.raises(InvalidCompressionError, match="bits"):
        prepare_qat(nn.Linear(2, 2), bits=3)
    with pytest.raises(InvalidCompressionError, match="weight_method"):
        prepare_qat(nn.Linear(2, 2), weight_method="lsq")  # type: ignore[arg-type]
    with pytest.raises(InvalidCompressionError, match="calibration batch"):
        quantize_post_training(nn.Linear(2, 2), [])
