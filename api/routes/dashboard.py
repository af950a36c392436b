"""The dashboard: its page and static files, and the per-layer costs its trial panel shows.

The page (``/``), its assets (``/static/...``, mounted by :mod:`api.app`) and Plotly
(``/vendor/plotly.min.js``) hold no data, so they are served without the token; the
page asks for the token and sends it with every ``/api`` call. Plotly's bundle is the
one the ``plotly`` Python package ships (``plotly/package_data/plotly.min.js``), read
from the installed package: nothing is fetched from a CDN, nothing is built at install.

``GET /api/jobs/{id}/trials/{n}/layers`` (in :data:`router`, under ``/api``) costs a
trial's planned network layer by layer with ``hw_models.estimate`` on the job's device
and runtime, and sets each layer beside the same layer with dense weights, which is
what its searched compression saves.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from api import crud
from api.deps import SessionDep, StudyReaderDep
from api.routes.jobs import MAX_SQL_INT, JobId
from api.schemas import ERROR_RESPONSES, TrialLayersPublic
from api.service import parse_spec
from hw_models import Dense, NetworkSpec, WeightSpec, estimate
from hw_models.ir import structure_to_dict
from search_spaces.errors import SearchSpaceError
from sparse_nas.spec import SearchJobSpec

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
"""The dashboard's own files (``api/static``, package data): HTML, CSS and JavaScript."""

pages = APIRouter(include_in_schema=False)
"""The dashboard page and Plotly, outside ``/api`` and without the token."""

router = APIRouter(prefix="/jobs", tags=["jobs"])
"""The dashboard's API routes (included under ``/api``, behind the token)."""


def plotly_bundle() -> Path | None:
    """``plotly.min.js`` of the installed ``plotly`` package, found without importing it."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bundle = Path(location) / "package_data" / "plotly.min.js"
        if bundle.is_file():
            return bundle
    return None


@pages.get("/")
def dashboard_page() -> FileResponse:
    """The single-page dashboard (``#/jobs``, ``#/jobs/<id>``)."""
    # no-cache: the page is revalidated on every load, so an upgrade shows at once.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@pages.get("/vendor/plotly.min.js")
def plotly_script() -> FileResponse:
    """Plotly's bundle, as shipped by the installed ``plotly`` package."""
    bundle = plotly_bundle()
    if bundle is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "plotly.min.js not found: the dashboard needs the plotly package (pip install plotly)",
        )
    return FileResponse(bundle, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


def _dense(network: NetworkSpec) -> NetworkSpec:
    """``network`` with every weight stored dense at its bits (the uncompressed baseline)."""
    layers = tuple(
        dataclasses.replace(
            layer, weights={name: WeightSpec(w.shape, w.bits, Dense()) for name, w in layer.weights.items()}
        )
        for layer in network.layers
    )
    return dataclasses.replace(network, layers=layers)


def trial_layer_costs(spec: SearchJobSpec, number: int, params: dict[str, Any]) -> dict[str, Any]:
    """Costs of one trial's planned network, per layer, on the job's device and runtime.

    Each layer carries its weights' storage (structure and bits, as searched) and
    ``dense_model_bytes``, what the layer would take with dense weights at the same bits;
    ``compression_ratio`` is ``dense_model_bytes / model_bytes``.

    Raises:
        InvalidSearchSpaceError: ``params`` is not a complete point of the job's space.
    """
    space = spec.build_search_space()
    network = space.to_network(params)
    device = spec.device_spec()
    report = estimate(network, device, spec.runtime)
    dense = {layer.name: layer for layer in estimate(_dense(network), device, spec.runtime).layers}
    weights = {layer.name: layer.weights for layer in network.layers}
    layers = []
    for layer in report.layers:
        dense_bytes = dense[layer.name].model_bytes
        layers.append(
            dataclasses.asdict(layer)
            | {
                "weights": [
                    {"name": name, "shape": list(w.shape), "bits": w.bits, "structure": structure_to_dict(w.structure)}
                    for name, w in weights.get(layer.name, {}).items()
                ],
                "dense_model_bytes": dense_bytes,
                "compression_ratio": dense_bytes / layer.model_bytes if layer.model_bytes else None,
            }
        )
    totals = {
        key: getattr(report, key)
        for key in (
            "params",
            "nonzero_params",
            "model_bytes",
            "runtime_code_bytes",
            "flash_bytes",
            "arena_bytes",
            "persistent_bytes",
            "scratch_bytes",
            "sram_overhead_bytes",
            "sram_bytes",
            "macs",
            "latency_ms",
            "energy_mj",
            "device_flash_bytes",
            "device_sram_bytes",
        )
    }
    return {"number": number, "device": report.device, "runtime": report.runtime, **totals, "layers": layers}


@router.get("/{job_id}/trials/{number}/layers", summary="A trial's costs per layer", responses=ERROR_RESPONSES)
def get_trial_layers(
    job_id: JobId,
    number: Annotated[int, PathParam(ge=0, le=MAX_SQL_INT, description="The trial's number in the job")],
    session: SessionDep,
    reader: StudyReaderDep,
) -> TrialLayersPublic:
    """Flash, SRAM, MACs and latency of each layer of the trial's network (planned, as
    searched), with each layer's weight storage and its size against dense weights.
    409 when the trial's parameters are not a complete point of the space (a waiting trial)."""
    job = crud.get_job(session, job_id)
    trial = reader.trial(job.study_name, number, not_before=job.updated_at.timestamp())
    if trial is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id!r} has no trial {number}")
    try:
        costs = trial_layer_costs(parse_spec(job.spec), number, trial["params"])
    except SearchSpaceError as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"trial {number} is not a complete point of the job's search space: {exc}"
        ) from None
    return TrialLayersPublic.model_validate(costs)
