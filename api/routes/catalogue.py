"""The catalogue a job spec refers to: devices (and registering one), search spaces, datasets."""

from __future__ import annotations

import functools
import inspect
import re
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from api.deps import JsonBody
from api.schemas import (
    ERROR_RESPONSES,
    DatasetPublic,
    DevicePublic,
    SearchSpacePublic,
    json_body_schema,
)
from hw_models import DeviceSpec, InvalidDeviceError, device_from_dict, get_device, list_devices, register_device
from hw_models.devices import CATALOGUE
from search_spaces.errors import SearchSpaceError
from search_spaces.families import BaseSearchSpace, iter_search_spaces
from sparse_nas.datasets import available_datasets, dataset_info

router = APIRouter(tags=["catalogue"])

_register_lock = threading.Lock()


def _device_public(device: DeviceSpec, custom: dict[str, DeviceSpec]) -> DevicePublic:
    return DevicePublic.model_validate(device.to_dict() | {"custom": device.name in custom})


@router.get("/devices", summary="List devices", responses=ERROR_RESPONSES)
def list_device_catalogue(request: Request) -> list[DevicePublic]:
    """Every device a job may name: the packaged catalogue and those registered here."""
    custom = request.app.state.custom_devices
    return [_device_public(d, custom) for d in list_devices()]


def _device_error(exc: InvalidDeviceError) -> RequestValidationError:
    """``device.<field>[.<key>]: message`` (hw_models' wording) as a located 422."""
    located = re.match(r"device((?:\.\w+)*): (.*)", str(exc), re.DOTALL)
    loc = ("body", *located[1].split(".")[1:]) if located else ("body",)
    msg = located[2] if located else str(exc)
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "invalid_device"}])


@router.post(
    "/devices",
    status_code=status.HTTP_201_CREATED,
    summary="Register a custom device",
    responses=ERROR_RESPONSES,
    openapi_extra=json_body_schema(
        "DeviceCreate",
        {
            "half_clock_f446": {
                "summary": "An STM32F446RE clocked at 90 MHz",
                "value": get_device("stm32f446re").to_dict()
                | {"name": "my_f446_90mhz", "display_name": "STM32F446RE at 90 MHz", "clock_hz": 90_000_000},
            }
        },
        "A device in the device-file format (docs/devices.md)",
    ),
)
def register_custom_device(body: JsonBody, request: Request) -> DevicePublic:
    """Validate a device file and add it to the catalogue (201), so jobs can name it.

    Registered devices live in this process only: they are gone after a restart, and a
    worker in another process does not know them. A job naming one stores the whole
    device in its spec, so the job itself runs anywhere. 409 when the name exists.
    """
    try:
        device = device_from_dict(body, origin="device")
    except InvalidDeviceError as exc:
        raise _device_error(exc) from None
    custom: dict[str, DeviceSpec] = request.app.state.custom_devices
    with _register_lock:
        if device.name in CATALOGUE.names():
            raise HTTPException(status.HTTP_409_CONFLICT, f"a device called {device.name!r} already exists")
        register_device(device)
        custom[device.name] = device
    return _device_public(device, custom)


def unregister_devices(custom: dict[str, DeviceSpec]) -> None:
    """Remove the devices an app registered (at its shutdown)."""
    with _register_lock:
        for name in list(custom):
            CATALOGUE.unregister(name)
            del custom[name]


# --- search spaces ----------------------------------------------------------------------


def _distribution(dist: BaseDistribution) -> dict[str, Any]:
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    if isinstance(dist, IntDistribution):
        return {"type": "int", "low": dist.low, "high": dist.high, "step": dist.step, "log": dist.log}
    if isinstance(dist, FloatDistribution):
        return {"type": "float", "low": dist.low, "high": dist.high, "step": dist.step, "log": dist.log}
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def _describe_family(cls: type[BaseSearchSpace]) -> dict[str, Any]:
    """A family's options, the datasets it accepts and its parameters on the first of them."""
    fits: list[str] = []
    example: BaseSearchSpace | None = None
    for name in available_datasets():
        info = dataset_info(name)
        try:
            space = cls(info.input_shape, info.num_classes)
        except (SearchSpaceError, ValueError):
            continue
        fits.append(name)
        example = example or space
    doc = inspect.getdoc(cls) or ""
    return {
        "name": cls.name,
        "description": doc.split("\n\n")[0].replace("\n", " "),
        "options": [{"name": o.name, "default": o.default, "description": o.description} for o in cls.option_specs],
        "example_dataset": fits[0] if fits else None,
        "example_input_shape": list(example.input_shape) if example else None,
        "parameters": {n: _distribution(d) for n, d in example.distributions().items()} if example else {},
        "fits_datasets": fits,
    }


@functools.lru_cache(maxsize=1)
def _search_spaces() -> tuple[SearchSpacePublic, ...]:
    # Families and datasets register at import, so the listing is fixed for the process.
    return tuple(SearchSpacePublic.model_validate(_describe_family(cls)) for cls in iter_search_spaces())


@router.get("/search-spaces", summary="List search spaces", responses=ERROR_RESPONSES)
def list_search_spaces() -> list[SearchSpacePublic]:
    """Model families with their options and searched parameters (default options, on the
    first dataset each accepts)."""
    return list(_search_spaces())


@router.get("/datasets", summary="List datasets", responses=ERROR_RESPONSES)
def list_datasets() -> list[DatasetPublic]:
    """Registered datasets: shapes, classes, options and where their files come from."""
    return [DatasetPublic.model_validate(dataset_info(name).to_dict()) for name in available_datasets()]
