"""Property-based fuzzing of every operation of the OpenAPI schema (schemathesis 4, in-process ASGI).

For each operation, schemathesis generates requests from the schema, valid ones and
(where the operation takes input) invalid ones; job routes are also aimed at two real
jobs, one with trials. The two routes whose body the engine validates also get
near-valid bodies: their documented example with one field, at any depth, replaced by
arbitrary JSON or dropped. No request may get a 5xx. Generation is derandomised and
bounded (:data:`MAX_EXAMPLES` per strategy). One app per database: a SQLite file, and a
fresh PostgreSQL database (marked ``postgres``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from api.app import create_app
from api.routes.catalogue import unregister_devices
from api.schemas import EXAMPLE_JOB_SPEC
from api.settings import Settings
from hw_models import get_device
from tests.api_tests.test_app import _fake_trials

MAX_EXAMPLES = 20
"""Examples per operation and strategy: reaches the error branches, keeps the file under a minute."""
NEAR_VALID_EXAMPLES = 100
"""Near-valid bodies per engine-validated route: they reach the engine's deeper validators."""

EXAMPLE_DEVICE = get_device("stm32f446re").to_dict() | {"name": "fuzz_board"}

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**31, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
"""Arbitrary JSON, with integers beyond a database column's range."""

_DROP = object()


def _paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested mapping (lists are replaced whole)."""
    out = []
    if isinstance(document, dict):
        for key, value in document.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


def _replaced(document: dict, path: tuple, value: Any) -> dict:
    head, *rest = path
    copy = dict(document)
    if rest:
        copy[head] = _replaced(copy[head], tuple(rest), value)
    elif value is _DROP:
        del copy[head]
    else:
        copy[head] = value
    return copy


def near_valid(example: dict) -> st.SearchStrategy[dict]:
    """The example with one field replaced by arbitrary JSON, or dropped."""
    return st.tuples(st.sampled_from(_paths(example)), JSON_VALUES | st.just(_DROP)).map(
        lambda change: _replaced(example, *change)
    )


NEAR_VALID_BODIES = {("POST", "/api/jobs"): EXAMPLE_JOB_SPEC, ("POST", "/api/devices"): EXAMPLE_DEVICE}


def _operations() -> list[tuple[str, str]]:
    # Building an app touches no database; only its lifespan (in the fixture) does.
    app = create_app(Settings(database_url="sqlite://", host="127.0.0.1", api_token=None))
    return [(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item]


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.xdist_group("postgres")])],
)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[schemathesis.BaseSchema, dict[str, str]]]:
    """The app's schema and two real jobs: ``subject`` (with trials) and ``victim`` (for DELETE).

    On SQLite, and on PostgreSQL (whose text refuses NUL characters, even to compare).
    """
    tmp = tmp_path_factory.mktemp("fuzz")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'service.db'}"
    else:
        from tests.conftest import PG_PASSWORD, PG_ROLE, _as_postgres

        server = request.getfixturevalue("postgres_server")
        name = f"sparse_nas_fuzz_{uuid.uuid4().hex[:12]}"
        _as_postgres(f"CREATE DATABASE {name} OWNER {PG_ROLE}")
        url = f"postgresql+psycopg://{PG_ROLE}:{PG_PASSWORD}@{server}/{name}"
        drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("SPARSE_NAS_")}
    try:
        settings = Settings(
            state_dir=tmp / "state",
            data_dir=tmp / "data",
            database_url=url,
            host="127.0.0.1",
            api_token=None,
            max_body_bytes=65536,
        )
    finally:
        os.environ.update(saved)
    app = create_app(settings)
    with TestClient(app) as client:
        subject = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC).json()
        victim = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC | {"name": "victim"}).json()
    _fake_trials(settings, subject["study_name"], n_done=4, running_at=2)
    yield schemathesis.openapi.from_asgi("/openapi.json", app), {"subject": subject["id"], "victim": victim["id"]}
    # schemathesis keeps the app's lifespan open until the process exits: drop the devices
    # the fuzzing registered now, so later tests in this process see the packaged catalogue.
    unregister_devices(app.state.custom_devices)
    if drop is not None:
        from tests.conftest import _as_postgres

        _as_postgres(drop)


def _strategies(operation, method: str, path: str, jobs: dict[str, str]) -> list[tuple[st.SearchStrategy, int]]:
    """(strategy, examples) pairs: schema-generated requests, aimed at real jobs, near-valid bodies."""
    takes_input = bool(operation.path_parameters or operation.query or operation.headers or operation.body)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]
    strategies = [(operation.as_strategy(generation_mode=mode), MAX_EXAMPLES) for mode in modes]
    if "{job_id}" in path:
        fixed = {"job_id": jobs["victim" if method == "DELETE" else "subject"]}
        strategies += [
            (operation.as_strategy(generation_mode=mode, path_parameters=fixed), MAX_EXAMPLES) for mode in modes
        ]
    if (method, path) in NEAR_VALID_BODIES:
        bodies = near_valid(NEAR_VALID_BODIES[method, path])
        cases = bodies.map(lambda body: operation.Case(body=body, media_type="application/json"))
        strategies.append((cases, NEAR_VALID_EXAMPLES))
    return strategies


@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_request_gets_a_server_error(service, method, path):
    schema, jobs = service
    operation = schema[path][method]
    for strategy, max_examples in _strategies(operation, method, path, jobs):

        @hypothesis.settings(
            max_examples=max_examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error])

        no_server_error()
