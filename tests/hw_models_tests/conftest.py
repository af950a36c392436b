"""Fixtures: a device with round numbers, so hand-computed latencies are easy to check."""

from __future__ import annotations

import pytest

from hw_models import DeviceSpec, device_from_dict
from hw_models.devices import ELEMENT_OP_KINDS, MAC_OP_KINDS


def make_device_dict(**overrides: object) -> dict:
    data = {
        "name": "round_numbers",
        "display_name": "Round numbers test MCU",
        "core": "cortex-m4",
        "dsp": True,
        "fpu": True,
        "clock_hz": 1_000_000,
        "flash_bytes": 1 << 20,
        "sram_bytes": 1 << 17,
        "sram_overhead_bytes": 1000,
        "cycles_per_mac": {k: 2.0 for k in MAC_OP_KINDS},
        "cycles_per_output": {k: 3.0 for k in MAC_OP_KINDS},
        "cycles_per_element": {k: 1.0 for k in ELEMENT_OP_KINDS},
        "op_overhead_cycles": 100,
        "active_power_mw": 50.0,
        "sources": {"clock_hz": "test fixture"},
    }
    data.update(overrides)
    return data


@pytest.fixture
def device() -> DeviceSpec:
    return device_from_dict(make_device_dict())


@pytest.fixture
def device_no_dsp() -> DeviceSpec:
    return device_from_dict(make_device_dict(name="round_numbers_m0", core="cortex-m0plus", dsp=False))
