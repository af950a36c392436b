"""The BaseSearchSpace contract, checked for every registered family."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch

import search_spaces.families as families
from hw_models import estimate
from search_spaces.compression import BaseCompressedLinear
from search_spaces.families import get_search_space, search_space_names

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Each family on a dataset shape it is meant for: (torch input shape, classes).
DATASETS = {
    "sparse_cnn": ((1, 28, 28), 10),
    "ds_cnn": ((1, 49, 10), 12),
    "mbv2": ((3, 32, 32), 10),
    "rnn": ((49, 10), 10),
}
COSTS = ("flash_bytes", "sram_bytes", "macs", "latency_ms")


def sample(space, n, seed):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask(space.distributions()).params for _ in range(n)]


@pytest.fixture(params=search_space_names())
def space(request):
    shape, classes = DATASETS[request.param]
    return get_search_space(request.param, shape, classes)


def test_every_registered_family_has_a_dataset_here():
    assert set(search_space_names()) <= set(DATASETS)


def test_distributions_are_fixed_and_serialisable(space):
    a, b = space.distributions(), space.distributions()
    assert a == b and a
    for dist in a.values():
        json.loads(optuna.distributions.distribution_to_json(dist))


def test_sample_build_forward_no_nan(space):
    torch.manual_seed(0)
    for params in sample(space, 4, seed=1):
        model = space.build(params).eval()
        x = torch.randn(3, *space.input_shape)
        y = model(x)
        assert y.shape == (3, space.num_classes)
        assert torch.isfinite(y).all()


def test_to_network_counts_equal_the_built_model(space):
    torch.manual_seed(0)
    for params in sample(space, 6, seed=2):
        model = space.build(params)
        for m in model.modules():
            if hasattr(m, "prune_to") and hasattr(m, "target_density"):
                m.prune_to()  # the planned network is the model at its target densities
        planned = estimate(space.to_network(params), "stm32f446re", "ideal")
        real = estimate(space.network_from_model(model, params), "stm32f446re", "ideal")
        assert planned.nonzero_params == real.nonzero_params
        assert planned.macs == real.macs
        stored = sum(m.stored_parameters() for m in model.modules() if isinstance(m, BaseCompressedLinear))
        assert real.nonzero_params >= stored


def test_batch_costs_equal_single_costs(space):
    cands = sample(space, 40, seed=3)
    report = space.cost_batch(cands, "stm32f746zg")
    for i in range(0, 40, 7):
        single = estimate(space.to_network(cands[i]), "stm32f746zg")
        for metric in COSTS:
            assert getattr(report, metric)[i] == pytest.approx(getattr(single, metric)), (i, metric)


def test_minimum_costs_bound_every_sampled_point(space):
    mins = space.minimum_costs("stm32f446re")
    report = space.cost_batch(sample(space, 300, seed=4), "stm32f446re")
    smallest = estimate(space.to_network(space.smallest()), "stm32f446re")
    for metric in COSTS:
        assert mins[metric] <= getattr(report, metric).min() + 1e-9, metric
        assert mins[metric] <= getattr(smallest, metric) + 1e-9, metric
    # smallest() itself is the cheapest point in flash and MACs.
    assert smallest.flash_bytes <= report.flash_bytes.min()
    assert smallest.macs <= report.macs.min()


def test_sampling_is_deterministic_for_a_seed(space):
    assert sample(space, 5, seed=9) == sample(space, 5, seed=9)
    assert sample(space, 5, seed=9) != sample(space, 5, seed=10)


def test_sampling_is_deterministic_in_a_fresh_process(space):
    shape, classes = DATASETS[space.name]
    code = (
        "import optuna, json, search_spaces.families as f;"
        "optuna.logging.set_verbosity(optuna.logging.WARNING);"
        f"s = f.get_search_space({space.name!r}, {shape!r}, {classes});"
        "st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=9));"
        "print(json.dumps([st.ask(s.distributions()).params for _ in range(5)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(sample(space, 5, seed=9)))


def test_space_pickles(space):
    clone = pickle.loads(pickle.dumps(space))
    assert clone.distributions() == space.distributions()


def test_bad_options_and_params_name_the_field(space):
    with pytest.raises(families.InvalidSearchSpaceError, match=r"options: unknown option\(s\) \['colour'\]"):
        type(space)(space.input_shape, space.num_classes, {"colour": "red"})
    params = space.smallest()
    name = next(iter(params))
    with pytest.raises(families.InvalidSearchSpaceError, match=rf"params: .*missing \['{name}'\]"):
        space.check_params({k: v for k, v in params.items() if k != name})


def test_out_of_range_params_name_the_field(space):
    for name, dist in space.distributions().items():
        bad = "not-a-choice" if isinstance(dist, optuna.distributions.CategoricalDistribution) else dist.high + 10**6
        with pytest.raises(families.InvalidSearchSpaceError, match=rf"params\.{name}: "):
            space.check_params(space.smallest() | {name: bad})


def test_smallest_is_inside_the_space(space):
    space.check_params(space.smallest())
    assert np.isfinite(estimate(space.to_network(space.smallest()), "stm32f446re").latency_ms)


# Options that leave few layouts but every compression method: with the defaults a
# random sparse_cnn or mbv2 point mostly has a layout of its own (pooling, separable
# blocks, per-stage depths and expansions really change the graph).
FEW_LAYOUTS = {
    "sparse_cnn": {"max_conv_blocks": 1},
    "mbv2": {"max_depth": 1, "expansions": [6]},
    "ds_cnn": {},
    "rnn": {},
}


@pytest.mark.parametrize("name", sorted(FEW_LAYOUTS))
def test_points_differing_in_methods_share_one_vectorised_pass(name, monkeypatch):
    shape, classes = DATASETS[name]
    space = get_search_space(name, shape, classes, FEW_LAYOUTS[name])
    cands = sample(space, 300, seed=6)
    passes = []
    real = families._base.estimate_batch

    def counting(batch, *args, **kwargs):
        passes.append(batch.size)
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(families._base, "estimate_batch", counting)
    report = space.cost_batch(cands, "stm32f446re")
    assert len({space.topology_key(p) for p in cands}) == len(passes) < 0.3 * len(cands)
    assert sum(passes) == len(cands)
    for i in range(0, 300, 15):
        single = estimate(space.to_network(cands[i]), "stm32f446re")
        for metric in COSTS:
            assert getattr(report, metric)[i] == pytest.approx(getattr(single, metric)), (i, metric)
