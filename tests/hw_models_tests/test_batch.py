"""Vectorised batch costing equals single-network costing, network by network."""

from __future__ import annotations

import numpy as np
import pytest

from hw_models import (
    InvalidNetworkError,
    NetworkBuilder,
    Sparse,
    estimate,
    estimate_batch,
    get_device,
    stack_networks,
)

TOTALS = (
    "params", "nonzero_params", "model_bytes", "runtime_code_bytes", "flash_bytes", "arena_bytes",
    "persistent_bytes", "scratch_bytes", "sram_bytes", "working_memory_bytes", "peak_live_bytes", "macs",
    "latency_ms", "energy_mj",
)


def cnn_family(channels, kernels, strides, density, dense_units, bits=8):
    """A 6-layer CNN family: 3 conv (+pool), flatten, 2 linear. Arguments may be arrays."""
    b = NetworkBuilder("cnn6", (28, 28, 1))
    x = b.input
    for i in range(3):
        x = b.conv2d(x, channels[i], kernels[i], stride=strides[i], activation="relu", weight_bits=bits,
                     name=f"conv{i}")
    x = b.max_pool2d(x, 2, name="pool")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, dense_units, activation="relu", structure=Sparse(density), name="fc1")
    x = b.linear(x, 10, name="fc2")
    return b


def random_configs(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "channels": [rng.choice([4, 8, 12, 16, 24, 32], n) for _ in range(3)],
        "kernels": [rng.choice([1, 3, 5], n) for _ in range(3)],
        "strides": [rng.choice([1, 2], n) for _ in range(3)],
        "density": rng.uniform(0.05, 1.0, n),
        "dense_units": rng.choice([16, 32, 64, 128], n),
        "bits": rng.choice([2, 4, 8], n),
    }


def pick(cfg, i):
    return {k: ([v[i] for v in val] if isinstance(val, list) else val[i]) for k, val in cfg.items()}


@pytest.mark.parametrize("runtime", ["tflm", "ideal"])
@pytest.mark.parametrize("device_name", ["stm32f446re", "rp2040"])
def test_batch_equals_single_estimates(runtime, device_name):
    device = get_device(device_name)
    cfg = random_configs(40, seed=1)
    batch = cnn_family(**cfg).build_batch()
    assert batch.size == 40
    report = estimate_batch(batch, device, runtime)
    for i in range(batch.size):
        single = estimate(cnn_family(**pick(cfg, i)).build(), device, runtime)
        for key in TOTALS:
            assert getattr(report, key)[i] == pytest.approx(getattr(single, key)), (i, key)


def test_stack_networks_equals_single_estimates():
    device = get_device("stm32f746zg")
    cfg = random_configs(10, seed=2)
    nets = [cnn_family(**pick(cfg, i)).build() for i in range(10)]
    report = estimate_batch(stack_networks(nets), device)
    for i, net in enumerate(nets):
        assert report.sram_bytes[i] == estimate(net, device).sram_bytes
        assert report.latency_ms[i] == pytest.approx(estimate(net, device).latency_ms)


def test_stacking_different_topologies_raises():
    a = cnn_family([8, 8, 8], [3, 3, 3], [1, 1, 1], 0.5, 32).build()
    b = NetworkBuilder("other", (28, 28, 1))
    b.conv2d(b.input, 8, 3)
    with pytest.raises(InvalidNetworkError):
        stack_networks([a, b.build()])


def test_feasibility_mask():
    device = get_device("stm32f446re")
    cfg = random_configs(200, seed=3)
    report = estimate_batch(cnn_family(**cfg).build_batch(), device)
    mask = report.feasible(max_sram_bytes=64 * 1024, max_latency_ms=100)
    assert mask.dtype == bool and 0 < mask.sum() < 200
    assert np.all(report.sram_bytes[mask] <= 64 * 1024) and np.all(report.latency_ms[mask] <= 100)
