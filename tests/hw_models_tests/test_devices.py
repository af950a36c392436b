"""The device catalogue and custom devices."""

from __future__ import annotations

import json

import pytest

from hw_models import (
    DeviceCatalogue,
    InvalidDeviceError,
    UnknownDeviceError,
    device_from_dict,
    get_device,
    list_devices,
    load_device,
)
from hw_models.devices import CATALOGUE, MAC_OP_KINDS

from .conftest import make_device_dict

REQUIRED_DEVICES = {
    "stm32f446re", "stm32f746zg", "stm32f767zi", "stm32h743zi", "nrf52840", "rp2040", "esp32s3",
    "arduino_nano_33_ble", "atmega328p",
}
NUMERIC_FIELDS = ("clock_hz", "flash_bytes", "sram_bytes", "sram_overhead_bytes", "op_overhead_cycles", "active_power_mw")


def test_catalogue_has_the_required_devices():
    assert {d.name for d in list_devices()} >= REQUIRED_DEVICES


@pytest.mark.parametrize("name", sorted(REQUIRED_DEVICES))
def test_every_catalogued_device_validates_and_cites_its_sources(name):
    device = get_device(name)
    assert device_from_dict(device.to_dict()) == device
    cited = " ".join(device.sources)
    for field in NUMERIC_FIELDS:
        assert field in cited, f"{name}: no source for {field}"
    for table in ("cycles_per_mac", "cycles_per_output", "cycles_per_element"):
        assert any(k.startswith(table) for k in device.sources), f"{name}: no source for {table}"


def test_known_memories_of_the_micronets_boards():
    # MicroNets (arXiv 2010.11267) Table 1 / ST datasheets.
    f446 = get_device("stm32f446re")
    assert (f446.sram_bytes, f446.flash_bytes, f446.clock_hz) == (128 * 1024, 512 * 1024, 180e6)
    f746 = get_device("stm32f746zg")
    assert (f746.sram_bytes, f746.flash_bytes, f746.clock_hz) == (320 * 1024, 1024 * 1024, 216e6)
    assert get_device("atmega328p").sram_bytes == 2048


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(UnknownDeviceError, match=r"unknown device 'stm32f999'.*stm32f446re"):
        get_device("stm32f999")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clock_hz": -1}, r"\.clock_hz: must be positive"),
        ({"core": "cortex-a53"}, r"\.core: expected one of \['cortex-m0plus'"),
        ({"name": "Bad Name"}, r"\.name: must match"),
        ({"flash_bytes": "512K"}, r"\.flash_bytes: expected an integer, got '512K'"),
        ({"cycles_per_mac": {"conv2d": 1.0}}, r"\.cycles_per_mac: needs exactly the op kinds .*missing \['depthwise_conv2d'"),
        ({"colour": "blue"}, r"unknown field\(s\) \['colour'\]"),
        ({"sram_overhead_bytes": 1 << 20}, r"\.sram_overhead_bytes: must be below sram_bytes"),
        ({"sram_bytes": 10**30}, r"\.sram_bytes: must be at most 1,099,511,627,776"),
        ({"clock_hz": 1e300}, r"\.clock_hz: must be at most 100,000,000,000"),
        ({"op_overhead_cycles": 1e308}, r"\.op_overhead_cycles: must be at most 1,000,000,000"),
        ({"cycles_per_mac": {k: 1e30 for k in MAC_OP_KINDS}}, r"\.cycles_per_mac\.conv2d: must be at most 1,000,000,000 cycles"),
    ],
)
def test_malformed_device_errors_name_the_field(change, message):
    with pytest.raises(InvalidDeviceError, match=message):
        device_from_dict(make_device_dict(**change))


def test_missing_field():
    data = make_device_dict()
    del data["clock_hz"]
    with pytest.raises(InvalidDeviceError, match=r"device\.clock_hz: required field is missing"):
        device_from_dict(data)


def test_custom_device_from_file(tmp_path):
    path = tmp_path / "my_board.json"
    path.write_text(json.dumps(make_device_dict(name="my_board")))
    assert load_device(path).name == "my_board"
    path.write_text("{oops")
    with pytest.raises(InvalidDeviceError, match=r"my_board\.json' is not valid JSON"):
        load_device(path)
    with pytest.raises(InvalidDeviceError, match="does not exist"):
        load_device(tmp_path / "absent.json")


def test_register_custom_device_and_twice_raises():
    catalogue = DeviceCatalogue(CATALOGUE._directory)
    catalogue.register(make_device_dict(name="my_board"))
    assert catalogue.get("my_board").clock_hz == 1e6
    with pytest.raises(InvalidDeviceError, match="already registered"):
        catalogue.register(make_device_dict(name="my_board"))
    with pytest.raises(InvalidDeviceError, match="already registered"):
        catalogue.register(make_device_dict(name="stm32f446re"))
