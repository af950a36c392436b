"""The `rnn` family against hand counts (docs/hw_models.md: lstm / gru MACs and biases)."""

from __future__ import annotations

import optuna
import pytest
import torch

from hw_models import estimate
from search_spaces.compression import BaseCompressedLinear
from search_spaces.families import InvalidSearchSpaceError, get_search_space
from search_spaces.families._knobs import METHODS
from search_spaces.quantization import QuantizedLayer

optuna.logging.set_verbosity(optuna.logging.WARNING)
torch.set_num_threads(1)

T, F, CLASSES = 49, 10, 10  # FSDD as sequences: 49 MFCC frames of 10 coefficients


@pytest.fixture(scope="module")
def space():
    return get_search_space("rnn", (T, F), CLASSES, {"quantization": ["int8", "float32"]})


def config(
    space,
    cell="lstm",
    hidden=(16, 16),
    n_layers=1,
    ih="dense",
    hh="dense",
    level=1,
    n_dense=0,
    units=16,
    quantization="float32",
):
    p = space.smallest() | {
        "cell": cell,
        "n_layers": n_layers,
        "n_dense": n_dense,
        "quantization": quantization,
        "dense0_units": units,
        "dense0_method": "dense",
    }
    for i in range(2):
        p |= {
            f"rnn{i}_hidden": hidden[i],
            f"rnn{i}_ih_method": ih,
            f"rnn{i}_hh_method": hh,
            f"rnn{i}_ih_level": level,
            f"rnn{i}_hh_level": level,
        }
    return space.check_params(p)


def counts(space, params):
    report = estimate(space.to_network(params), "stm32f446re", "ideal")
    return report.nonzero_params, report.macs


def torch_params(model):
    return sum(p.numel() for p in model.parameters())


def test_dense_lstm_matches_a_hand_count(space):
    h = 16
    w_ih, w_hh, bias = 4 * h * F, 4 * h * h, 4 * h  # 640, 1024, 64: one fused bias per gate
    classifier = h * CLASSES + CLASSES  # 170
    # Per step: both gate matrices plus f*c, i*g, o*tanh(c) per unit.
    macs = T * (w_ih + w_hh + 3 * h) + h * CLASSES  # 49 * 1712 + 160
    assert (w_ih + w_hh + bias + classifier, macs) == (1898, 84048)
    params = config(space, "lstm")
    assert counts(space, params) == (1898, 84048)
    assert torch_params(space.build(params)) == 1898


def test_dense_gru_matches_a_hand_count(space):
    h = 16
    w_ih, w_hh = 3 * h * F, 3 * h * h  # 480, 768
    bias = 3 * h + h  # b_r, b_z, b_in merged into W_ih's bias (48) plus b_hn (16)
    macs = T * (w_ih + w_hh + 3 * h) + h * CLASSES  # r*(W_hn h), (1-z)*n, z*h per unit
    assert (w_ih + w_hh + bias + h * CLASSES + CLASSES, macs) == (1482, 63664)
    params = config(space, "gru")
    assert counts(space, params) == (1482, 63664)
    assert torch_params(space.build(params)) == 1482


def test_two_layer_gru_with_a_dense_head_matches_a_hand_count(space):
    layer0 = 3 * 16 * F + 3 * 16 * 16 + 4 * 16  # 1312
    layer1 = 3 * 24 * 16 + 3 * 24 * 24 + 4 * 24  # 1152 + 1728 + 96: W_ih reads layer 0's 16 outputs
    dense, classifier = 24 * 32 + 32, 32 * CLASSES + CLASSES
    macs = T * (480 + 768 + 48) + T * (1152 + 1728 + 72) + 24 * 32 + 32 * CLASSES
    assert (layer0 + layer1 + dense + classifier, macs) == (5418, 209240)
    params = config(space, "gru", hidden=(16, 24), n_layers=2, n_dense=1, units=32)
    assert counts(space, params) == (5418, 209240)
    model = space.build(params)
    assert torch_params(model) == 5418
    assert model(torch.randn(2, T, F)).shape == (2, CLASSES)


def test_kronecker_w_hh_matches_a_hand_count(space):
    # W_hh of an LSTM with H = 32 is 128 x 32; Thakker et al.'s rule (full rank 32, then
    # fewest parameters) gives (8 x 8) kron (16 x 4): 64 + 64 = 128 values, and the vec
    # trick costs m1 n2 (n1 + m2) = 8 * 4 * (8 + 16) = 768 MACs per step.
    h = 32
    dense_lstm = 4 * h * F + 4 * h * h + 4 * h
    params = config(space, "lstm", hidden=(h, h), hh="kronecker")
    nonzero, macs = counts(space, params)
    assert nonzero == 4 * h * F + 128 + 4 * h + h * CLASSES + CLASSES < dense_lstm + h * CLASSES + CLASSES
    assert macs == T * (4 * h * F + 768 + 3 * h) + h * CLASSES
    model = space.build(params)
    assert model.rnns[0].w_hh[0].stored_parameters() == 128
    assert model.rnns[0].stored_parameters() == 4 * h * F + 128 + 4 * h


@pytest.mark.parametrize("method", METHODS)
def test_every_methods_stored_values_match_hw_models(space, method):
    torch.manual_seed(0)
    params = config(
        space, "gru", hidden=(16, 24), n_layers=2, ih=method, hh=method, level=3, n_dense=1, quantization="int8"
    )
    model = space.build(params)
    for m in model.modules():
        if hasattr(m, "prune_to") and hasattr(m, "target_density"):
            m.prune_to()
    # QAT wraps every gate matrix; the family reads through the wrapper.
    assert all(isinstance(m, QuantizedLayer) for rnn in model.rnns for m in [*rnn.w_ih, *rnn.w_hh])
    report = estimate(space.network_from_model(model, params), "stm32f446re", "ideal")
    layers = {layer.name: layer for layer in report.layers}
    for i, rnn in enumerate(model.rnns):
        assert layers[f"rnn{i}"].nonzero_params == rnn.stored_parameters()
    assert report.nonzero_params == counts(space, params)[0]
    dense0 = model.head.dense0.module
    assert isinstance(dense0, BaseCompressedLinear)
    assert layers["dense0"].nonzero_params == dense0.stored_parameters() + dense0.out_features


def test_compression_stores_fewer_values_than_dense(space):
    dense = counts(space, config(space, "lstm", hidden=(64, 64)))
    for method in METHODS[1:]:
        compressed = counts(space, config(space, "lstm", hidden=(64, 64), ih=method, hh=method, level=3))
        assert compressed[0] < dense[0], method


def test_har_sequences_build_and_cost():
    space = get_search_space("rnn", (128, 9), 6)
    model = space.build(space.smallest()).eval()
    assert model(torch.randn(2, 128, 9)).shape == (2, 6)
    assert estimate(space.to_network(space.smallest()), "stm32f446re").macs > 0


def test_smallest_takes_a_bottleneck_when_hidden_sizes_are_large():
    options = {"hidden": [128, 256], "dense_units": [8, 64], "methods": ["magnitude_pruning", "low_rank", "kronecker"]}
    space = get_search_space("rnn", (T, F), CLASSES, options)
    smallest = space.smallest()
    assert smallest["n_dense"] == 1 and smallest["dense0_units"] == 8
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    report = space.cost_batch([study.ask(space.distributions()).params for _ in range(150)], "stm32f446re")
    assert estimate(space.to_network(smallest), "stm32f446re").macs <= report.macs.min()


def test_minimum_costs_bound_samples_when_methods_trade_macs_for_bytes():
    # Kronecker stores fewer bytes than HMD for these matrices but costs more MACs, so no
    # single point is cheapest in both; minimum_costs still bounds every point.
    space = get_search_space("rnn", (T, F), CLASSES, {"methods": ["kronecker", "hmd"]})
    mins = space.minimum_costs("stm32f446re")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    report = space.cost_batch([study.ask(space.distributions()).params for _ in range(150)], "stm32f446re")
    for metric in ("flash_bytes", "sram_bytes", "macs", "latency_ms"):
        assert mins[metric] <= getattr(report, metric).min() + 1e-9, metric


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"hidden": [12, 64]}, "options.hidden"),
        ({"hidden": [64, 16]}, "options.hidden"),
        ({"cells": ["rnn"]}, "options.cells"),
        ({"max_layers": 4}, "options.max_layers"),
        ({"max_dense_layers": True}, "options.max_dense_layers"),
        ({"methods": []}, "options.methods"),
        ({"quantization": ["int4"]}, "options.quantization"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(InvalidSearchSpaceError, match=rf"^{field}: "):
        get_search_space("rnn", (T, F), CLASSES, options)


def test_image_input_is_rejected_naming_the_field():
    with pytest.raises(InvalidSearchSpaceError, match=r"^input_shape: .*\(T, F\)"):
        get_search_space("rnn", (1, 49, 10), CLASSES)


def test_bad_params_name_the_field(space):
    with pytest.raises(InvalidSearchSpaceError, match=r"^params\.rnn0_hidden: 20 is outside"):
        space.check_params(space.smallest() | {"rnn0_hidden": 20})
    with pytest.raises(InvalidSearchSpaceError, match=r"^params\.rnn1_ih_level: 6 is outside"):
        space.check_params(space.smallest() | {"rnn1_ih_level": 6})
