"""The calibrated latency model against MicroNets' measurements (arXiv 2010.11267 Table 4).

Oracles are the paper's figures: Table 4 latencies and Mops, Table 5 architectures
(rebuilt in hw_models.reference_micronets). bench/calibrate_latency.py fits the device
files; these tests pin what the fit achieved, so a refit or a cost-model change that
breaks it fails here.
"""

from __future__ import annotations

import pytest

from hw_models import estimate, get_device
from hw_models.reference_micronets import MICRONETS

BOARDS = ("stm32f446re", "stm32f746zg", "stm32f767zi")

# Tolerances on predicted / published latency, from the fit (docs/devices.md#calibration).
# Fitted models: the worst residual after anchoring on KWS-S is 7.2% (DSCNN-M on F746ZG)
# and Table 4's rounding adds at most 0.9%; 10% keeps that margin and still fails the
# per-MAC-only model this replaced (off by up to 31% on the wide models).
FIT_TOLERANCE = 0.10
# Person Detection (MobileNetV1, a vision backbone) is held out of the fit and predicted
# 16-17% high on all three boards: pinned at 20% so it cannot drift further unnoticed.
HELD_OUT_TOLERANCE = {"Person Detection": 0.20}
# The FC autoencoder fixes linear's a exactly; Table 4 gives it to 1 ms, so half a unit.
FC_ABS_TOLERANCE_MS = 0.5


def _latency_cases() -> list:
    return [
        pytest.param(name, board, id=f"{name}-{board}")
        for name, model in MICRONETS.items()
        for board in BOARDS
        if board in model.published_latency_ms
    ]


@pytest.fixture(scope="module")
def networks() -> dict:
    return {name: model.build() for name, model in MICRONETS.items()}


@pytest.mark.parametrize(
    ("board", "published_ms"),
    [pytest.param("stm32f446re", 250.0, id="f446re-250ms"), pytest.param("stm32f746zg", 109.0, id="f746zg-109ms")],
)
def test_micronet_kws_s_is_reproduced_on_the_anchor_boards(networks, board, published_ms):
    # The calibration anchor. Table 4 gives 109 ms on F746ZG (108 ms is F767ZI).
    predicted = estimate(networks["MicroNet-KWS-S"], board).latency_ms
    assert predicted == pytest.approx(published_ms, rel=0.01)


@pytest.mark.parametrize(("name", "board"), _latency_cases())
def test_every_table4_latency_is_predicted_within_its_tolerance(networks, name, board):
    published = MICRONETS[name].published_latency_ms[board]
    predicted = estimate(networks[name], board).latency_ms
    if name == "AD-baseline":
        assert predicted == pytest.approx(published, abs=FC_ABS_TOLERANCE_MS)
    else:
        assert predicted == pytest.approx(published, rel=HELD_OUT_TOLERANCE.get(name, FIT_TOLERANCE))


@pytest.mark.parametrize(
    "name", [pytest.param(n, id=n) for n, m in MICRONETS.items() if m.published_mops is not None]
)
def test_rebuilt_networks_match_the_published_op_counts(networks, name):
    # Table 4 Mops = 2 x MACs. The KWS-backbone models land 1.2-1.9% above the paper,
    # which counted the layers after the stride-2 block with height 24.5 instead of 25.
    macs = estimate(networks[name], "stm32f446re").macs
    assert 2 * macs / 1e6 == pytest.approx(MICRONETS[name].published_mops, rel=0.02)


@pytest.mark.parametrize(
    ("slower", "faster"),
    [
        pytest.param("stm32f446re", "stm32f746zg", id="m4-180mhz>m7-216mhz"),
        pytest.param("nrf52840", "stm32f446re", id="m4-64mhz>m4-180mhz"),
        pytest.param("stm32f767zi", "stm32h743zi", id="m7-216mhz>m7-480mhz"),
    ],
)
def test_catalogue_orders_kws_s_latency_by_core_and_clock(networks, slower, faster):
    net = networks["MicroNet-KWS-S"]
    assert estimate(net, get_device(slower)).latency_ms > estimate(net, get_device(faster)).latency_ms
