"""sparse_cnn: one fixed configuration against a hand count."""

from __future__ import annotations

import pytest
import torch

from hw_models import estimate
from search_spaces.families import InvalidSearchSpaceError, get_search_space


@pytest.fixture
def space():
    return get_search_space("sparse_cnn", (1, 12, 12), 10, {"max_conv_blocks": 2, "max_dense_layers": 1})


def fixed_params(space):
    p = space.smallest()
    p |= {
        "n_conv": 2,
        "conv0_channels": 8, "conv0_kernel": 3, "conv0_downsample": "stride", "conv0_separable": False,
        "conv0_density": 1.0,
        "conv1_channels": 16, "conv1_kernel": 3, "conv1_downsample": "max", "conv1_separable": True,
        "conv1_density": 0.25,
        "n_dense": 1, "dense0_units": 32, "dense0_method": "low_rank", "dense0_level": 2,
        "quantization": "int8",
    }
    return p


def test_hand_count(space):
    report = estimate(space.to_network(fixed_params(space)), "stm32f446re", "ideal")
    layers = {lay.name: lay for lay in report.layers}
    # conv0: 3x3, 1 -> 8, stride 2 SAME on 12x12 -> 6x6x8; 72 weights (density 1) + 8 folded-BN biases;
    # 6*6*8*9 = 2,592 MACs.
    assert (layers["conv0"].output_shape, layers["conv0"].nonzero_params, layers["conv0"].macs) == ((6, 6, 8), 80, 2592)
    # conv1 separable: depthwise 3x3 on 8 channels (72 + 8, 2,592 MACs), then 1x1 8 -> 16 at
    # density 0.25: 32 of 128 weights (CSR 32 + 32 + 17 bytes < 128 dense) + 16 biases, 36 * 32 MACs.
    assert (layers["conv1_dw"].nonzero_params, layers["conv1_dw"].macs) == (80, 2592)
    assert (layers["conv1"].output_shape, layers["conv1"].nonzero_params, layers["conv1"].macs) == ((6, 6, 16), 48, 1152)
    # 2x2 max pool -> 3x3x16, global average pool -> 16.
    assert layers["conv1_pool"].output_shape == (3, 3, 16) and layers["pool"].output_shape == (16,)
    # dense0: low rank at level 2 (4x) on 32 x 16: target 512 / 4 = 128 values -> rank round(128 / 48) = 3:
    # 3 * (32 + 16) = 144 weights + 32 biases, 144 MACs.
    assert (layers["dense0"].nonzero_params, layers["dense0"].macs) == (176, 144)
    # classifier 32 -> 10: 320 + 10.
    assert (layers["classifier"].nonzero_params, layers["classifier"].macs) == (330, 320)
    assert report.nonzero_params == 80 + 80 + 48 + 176 + 330
    assert report.macs == 2592 + 2592 + 1152 + 144 + 320


def test_built_model_matches_the_planned_network(space):
    torch.manual_seed(0)
    params = fixed_params(space)
    model = space.build(params)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 10)
    for m in model.modules():
        if hasattr(m, "prune_to") and hasattr(m, "target_density"):
            m.prune_to()
    real = estimate(space.network_from_model(model, params), "stm32f446re", "ideal")
    assert real.nonzero_params == 80 + 80 + 48 + 176 + 330


def test_bad_option_names_the_field():
    with pytest.raises(InvalidSearchSpaceError, match=r"options\.channels: expected \[low, high\]"):
        get_search_space("sparse_cnn", (1, 28, 28), 10, {"channels": [64, 4]})
    with pytest.raises(InvalidSearchSpaceError, match=r"options\.methods: expected a non-empty list"):
        get_search_space("sparse_cnn", (1, 28, 28), 10, {"methods": ["winograd"]})


def test_points_whose_maps_vanish_are_invalid_and_every_valid_point_runs():
    """Three stride-2 convs take 8x8 to 1x1: a 2x2 pooling after them has no output."""
    import optuna

    space = get_search_space("sparse_cnn", (1, 8, 8), 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    invalid = 0
    for _ in range(200):
        params = space.sample(study.ask())
        reason = space.invalid_reason(params)
        if reason is not None:
            invalid += 1
            assert "pooling of a" in reason and "conv" in reason
            with pytest.raises(RuntimeError, match="too small"):
                space.build(params).eval()(torch.zeros(1, 1, 8, 8))
        else:
            assert space.build(params).eval()(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert invalid > 0
    collapsing = space.smallest() | {"n_conv": 4} | {f"conv{i}_downsample": "stride" for i in range(3)}
    assert space.invalid_reason(collapsing | {"conv3_downsample": "avg"}).startswith("conv3_downsample: avg pooling of a 1x1")
    assert space.invalid_reason(collapsing | {"conv3_downsample": "stride"}) is None
