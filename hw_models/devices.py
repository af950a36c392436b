"""The MCU device catalogue: one JSON data file per device, and user-registered ones.

Every numeric field of a device file has its source in the file's `sources` object
(datasheet, paper or measurement); docs/devices.md explains the calibration.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hw_models.errors import InvalidDeviceError, UnknownDeviceError
from hw_models.ir import FrozenMap

CORES = ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "xtensa-lx7", "avr8")
# Op kinds whose latency is cycles per MAC, and those costed per element processed.
MAC_OP_KINDS = ("conv2d", "depthwise_conv2d", "linear", "lstm", "gru")
ELEMENT_OP_KINDS = (
    "avg_pool2d", "max_pool2d", "global_avg_pool", "add", "concat", "reshape", "flatten",
    "softmax", "relu", "relu6", "embedding",
)
_NAME = re.compile(r"^[a-z0-9_]+$")
_CATALOGUE_DIR = Path(__file__).with_name("devices")


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A microcontroller as the cost model sees it.

    Attributes:
        name: catalogue id, `[a-z0-9_]+`.
        core: CPU core, one of CORES.
        dsp: whether the core has the Armv7E-M DSP extension (CMSIS-NN's fast kernels
            and their scratch buffers); false selects TFLM reference kernels.
        clock_hz: core clock used for latency.
        flash_bytes / sram_bytes: on-chip memory available to the application.
        sram_overhead_bytes: SRAM the firmware needs besides the tensor arena.
        cycles_per_mac: cycles per int8 MAC for each MAC op kind.
        cycles_per_output: cycles per output element of each MAC op kind (requantisation,
            im2col and loop set-up that MACs do not amortise; docs/devices.md).
        cycles_per_element: cycles per element processed for ops without MACs.
        op_overhead_cycles: fixed cycles per op invocation.
        active_power_mw: run-mode power at clock_hz.
    """

    name: str
    display_name: str
    core: str
    dsp: bool
    fpu: bool
    clock_hz: float
    flash_bytes: int
    sram_bytes: int
    sram_overhead_bytes: int
    cycles_per_mac: Mapping[str, float]
    cycles_per_output: Mapping[str, float]
    cycles_per_element: Mapping[str, float]
    op_overhead_cycles: float
    active_power_mw: float
    sources: Mapping[str, str] = field(default_factory=FrozenMap)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the device file."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for key in ("cycles_per_mac", "cycles_per_output", "cycles_per_element", "sources"):
            out[key] = dict(out[key])
        return out


_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    # name: (accepted types, required)
    "name": (str, True),
    "display_name": (str, True),
    "core": (str, True),
    "dsp": (bool, True),
    "fpu": (bool, True),
    "clock_hz": ((int, float), True),
    "flash_bytes": (int, True),
    "sram_bytes": (int, True),
    "sram_overhead_bytes": (int, True),
    "cycles_per_mac": (dict, True),
    "cycles_per_output": (dict, True),
    "cycles_per_element": (dict, True),
    "op_overhead_cycles": ((int, float), True),
    "active_power_mw": ((int, float), True),
    "sources": (dict, False),
    "notes": (str, False),
}


MAX_DEVICE_VALUES: Mapping[str, float] = {
    "clock_hz": 1e11,
    "flash_bytes": 2**40,
    "sram_bytes": 2**40,
    "sram_overhead_bytes": 2**40,
    "active_power_mw": 1e6,
    "op_overhead_cycles": 1e9,
}
"""Upper bounds far beyond any microcontroller: a value above one is a typo (or a unit
mistake), and would push the cost arithmetic to overflow."""

MAX_CYCLES = 1e9
"""Upper bound of each per-MAC, per-output and per-element cycle count."""


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _cycles_table(
    table: Mapping[str, Any], kinds: tuple[str, ...], where: str, allow_zero: bool = False
) -> FrozenMap:
    missing = [k for k in kinds if k not in table]
    unknown = sorted(set(table) - set(kinds))
    if missing or unknown:
        raise InvalidDeviceError(
            f"{where}: needs exactly the op kinds {list(kinds)}; missing {missing}, unknown {unknown}"
        )
    for k, v in table.items():
        if not (_positive(v) or (allow_zero and v == 0 and not isinstance(v, bool))):
            what = "zero or a positive" if allow_zero else "a positive"
            raise InvalidDeviceError(f"{where}.{k}: expected {what} number of cycles, got {v!r}")
        if v > MAX_CYCLES:
            raise InvalidDeviceError(f"{where}.{k}: must be at most {MAX_CYCLES:,.0f} cycles, got {v!r}")
    return FrozenMap({k: float(v) for k, v in table.items()})


def device_from_dict(data: Mapping[str, Any], origin: str = "device") -> DeviceSpec:
    """Validate a device description; errors name the field and what would be valid."""
    if not isinstance(data, Mapping):
        raise InvalidDeviceError(f"{origin}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise InvalidDeviceError(f"{origin}: unknown field(s) {unknown}; valid: {sorted(_FIELDS)}")
    for key, (types, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise InvalidDeviceError(f"{origin}.{key}: required field is missing")
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise InvalidDeviceError(f"{origin}.{key}: expected {_type_name(types)}, got {value!r}")
    if not _NAME.match(data["name"]):
        raise InvalidDeviceError(f"{origin}.name: must match [a-z0-9_]+, got {data['name']!r}")
    if data["core"] not in CORES:
        raise InvalidDeviceError(f"{origin}.core: expected one of {list(CORES)}, got {data['core']!r}")
    for key in ("clock_hz", "flash_bytes", "sram_bytes", "active_power_mw"):
        if not _positive(data[key]):
            raise InvalidDeviceError(f"{origin}.{key}: must be positive, got {data[key]!r}")
    for key in ("sram_overhead_bytes", "op_overhead_cycles"):
        if data[key] < 0:
            raise InvalidDeviceError(f"{origin}.{key}: must be zero or positive, got {data[key]!r}")
    for key, limit in MAX_DEVICE_VALUES.items():
        if data[key] > limit:
            raise InvalidDeviceError(f"{origin}.{key}: must be at most {limit:,.0f}, got {data[key]!r}")
    if data["sram_overhead_bytes"] >= data["sram_bytes"]:
        raise InvalidDeviceError(f"{origin}.sram_overhead_bytes: must be below sram_bytes ({data['sram_bytes']})")
    sources = data.get("sources", {})
    if not all(isinstance(v, str) for v in sources.values()):
        raise InvalidDeviceError(f"{origin}.sources: every source must be a string")
    return DeviceSpec(
        name=data["name"],
        display_name=data["display_name"],
        core=data["core"],
        dsp=data["dsp"],
        fpu=data["fpu"],
        clock_hz=float(data["clock_hz"]),
        flash_bytes=data["flash_bytes"],
        sram_bytes=data["sram_bytes"],
        sram_overhead_bytes=data["sram_overhead_bytes"],
        cycles_per_mac=_cycles_table(data["cycles_per_mac"], MAC_OP_KINDS, f"{origin}.cycles_per_mac"),
        cycles_per_output=_cycles_table(
            data["cycles_per_output"], MAC_OP_KINDS, f"{origin}.cycles_per_output", allow_zero=True
        ),
        cycles_per_element=_cycles_table(
            data["cycles_per_element"], ELEMENT_OP_KINDS, f"{origin}.cycles_per_element", allow_zero=True
        ),
        op_overhead_cycles=float(data["op_overhead_cycles"]),
        active_power_mw=float(data["active_power_mw"]),
        sources=FrozenMap(sources),
        notes=data.get("notes", ""),
    )


def _type_name(types: type | tuple[type, ...]) -> str:
    names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "dict": "an object"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)


def load_device(path: str | os.PathLike[str]) -> DeviceSpec:
    """Load and validate a device JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidDeviceError(f"device file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InvalidDeviceError(f"device file {str(path)!r} is not valid JSON: {exc}") from exc
    return device_from_dict(data, origin=path.name)


class DeviceCatalogue:
    """Devices by name: the packaged catalogue plus registered custom devices."""

    def __init__(self, directory: Path = _CATALOGUE_DIR) -> None:
        self._directory = directory
        self._devices: dict[str, DeviceSpec] | None = None

    def _load(self) -> dict[str, DeviceSpec]:
        if self._devices is None:
            devices = {}
            for path in sorted(self._directory.glob("*.json")):
                device = load_device(path)
                if device.name != path.stem:
                    raise InvalidDeviceError(f"{path.name}.name: must equal the file stem {path.stem!r}")
                devices[device.name] = device
            self._devices = devices
        return self._devices

    def names(self) -> list[str]:
        return sorted(self._load())

    def get(self, name: str) -> DeviceSpec:
        devices = self._load()
        if name not in devices:
            raise UnknownDeviceError(f"unknown device {name!r}; known devices: {', '.join(sorted(devices))}")
        return devices[name]

    def register(self, device: DeviceSpec | Mapping[str, Any]) -> DeviceSpec:
        """Add a custom device; registering a name that exists raises."""
        if not isinstance(device, DeviceSpec):
            device = device_from_dict(device)
        devices = self._load()
        if device.name in devices:
            raise InvalidDeviceError(f"name: a device called {device.name!r} is already registered")
        devices[device.name] = device
        return device

    def unregister(self, name: str) -> None:
        self._load().pop(name, None)


CATALOGUE = DeviceCatalogue()


def get_device(name: str) -> DeviceSpec:
    """The catalogued or registered device called `name`."""
    return CATALOGUE.get(name)


def list_devices() -> list[DeviceSpec]:
    """Every known device, sorted by name."""
    return [CATALOGUE.get(n) for n in CATALOGUE.names()]


def register_device(device: DeviceSpec | Mapping[str, Any]) -> DeviceSpec:
    """Register a custom device (a DeviceSpec or its JSON-form dict)."""
    return CATALOGUE.register(device)
