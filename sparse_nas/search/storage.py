"""Study storage and trial artifacts: Optuna's RDBStorage on any SQLAlchemy URL.

A SQLite file is the embedded default; PostgreSQL (``postgresql+psycopg://...``) serves
many jobs and drivers. Only the driver process of a job writes to its study, which is
what makes SQLite safe here. Each trained trial's weights are an Optuna artifact in a
file-system artifact store beside the database.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
from sqlalchemy import event

from sparse_nas.errors import SparseNASError
from sparse_nas.sqlite import enable_wal

SQLITE_BUSY_TIMEOUT_S = 60
"""How long a SQLite writer waits for a lock (readers such as a dashboard may hold it)."""


class StorageError(SparseNASError, ValueError):
    """A storage URL that cannot be opened, or a study that belongs to another job."""


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of a SQLite file (its directory is created)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_storage(url: str) -> RDBStorage:
    """Optuna's RDBStorage on ``url``, with the tables created if missing.

    Raises:
        StorageError: The URL names no installed driver or the database is unreachable;
            the message names the URL (without its password).
    """
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        storage = _create_rdb_storage(url, engine_kwargs)
    except Exception as exc:
        raise StorageError(
            f"storage {_redact(url)!r} cannot be opened: {type(exc).__name__}: {exc}; expected a SQLAlchemy URL "
            "such as sqlite:///path/to/jobs.db or postgresql+psycopg://user:password@host/db"
        ) from exc
    if url.startswith("sqlite"):
        event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()  # reconnect with the pragmas
    return storage


CREATE_ATTEMPTS = 3
"""Tries at opening a storage whose tables another process may be creating right now."""


def _create_rdb_storage(url: str, engine_kwargs: dict[str, Any]) -> RDBStorage:
    # On a fresh database, two processes starting together (the API and a worker in
    # docker-compose) both create Optuna's tables; the one that loses the race fails with
    # "already exists" (or a unique violation on the version table). The tables are
    # then there: opening again succeeds.
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:
            racing = "already exists" in str(exc).lower() or "unique" in str(exc).lower()
            if attempt == CREATE_ATTEMPTS or not racing:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # Optuna writes every suggested parameter and attribute in its own transaction. In
    # WAL mode with synchronous=NORMAL a commit does not wait for fsync: a trial's
    # bookkeeping drops from ~580 ms to ~100 ms on this machine under load. Committed
    # work survives a killed process; only a power cut can lose the last commits. WAL
    # also lets readers (the API, a dashboard) read while the driver writes.
    enable_wal(dbapi_connection, SQLITE_BUSY_TIMEOUT_S, synchronous_normal=True)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


CONSTRAINT_ATTR_PREFIX = "constraints:"
"""Where ``Trial.set_constraint`` keeps a named constraint: the system attribute ``constraints:NAME``."""


def set_trial_attrs(
    trial: optuna.trial.Trial,
    user_attrs: Mapping[str, Any],
    constraints: Mapping[str, float] | None = None,
    intermediate_values: Mapping[int, float] | None = None,
) -> None:
    """Store a trial's user attributes, named constraints and intermediate values in one transaction.

    ``Trial.set_user_attr`` and ``Trial.set_constraint`` commit one row each (a
    constraint also reads the trial's system attributes first). A trial stores about
    a dozen costs and limits when it is asked and a dozen measurements when it is
    told: one transaction instead of 12-20 cuts the driver's database time per phase
    several-fold, and a crash leaves either all of a phase's attributes or none.

    On an RDB storage this uses Optuna's own row writer
    (``RDBStorage._set_trial_attr_without_commit``, the function behind
    ``set_trial_user_attr``); on any other storage it falls back to the public calls.
    The trial's cached copy is updated as the public calls would. Intermediate values
    (step: value) are written as ``Trial.report`` would; it refuses multi-objective
    studies, so this is how a job stores its per-epoch validation accuracies.

    Raises:
        ValueError: A constraint is NaN (Optuna refuses it too).
    """
    named = {}
    for name, value in (constraints or {}).items():
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"constraint {name!r} of trial {trial.number} is NaN; a constraint must be a number")
        named[name] = value
    backend = trial.storage._backend if isinstance(trial.storage, _CachedStorage) else trial.storage
    if not isinstance(backend, RDBStorage):
        for step, value in (intermediate_values or {}).items():
            trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
        for key, value in user_attrs.items():
            trial.set_user_attr(key, value)
        for name, value in named.items():
            trial.set_constraint(name, value)
        return
    system_attrs = {f"{CONSTRAINT_ATTR_PREFIX}{name}": value for name, value in named.items()}
    with _create_scoped_session(backend.scoped_session) as session:
        for step, value in (intermediate_values or {}).items():
            backend._set_trial_intermediate_value_without_commit(session, trial._trial_id, step, value)
        for key, value in user_attrs.items():
            backend._set_trial_attr_without_commit(
                session, rdb_models.TrialUserAttributeModel, trial._trial_id, key, value
            )
        for key, value in system_attrs.items():
            backend._set_trial_attr_without_commit(
                session, rdb_models.TrialSystemAttributeModel, trial._trial_id, key, value
            )
    cached = trial._cached_frozen_trial
    cached.user_attrs.update(user_attrs)
    cached.system_attrs.update(system_attrs)


def artifact_store(directory: str | os.PathLike[str]) -> FileSystemArtifactStore:
    """A file-system artifact store in ``directory`` (created)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def save_weights(
    store: FileSystemArtifactStore,
    storage: optuna.storages.BaseStorage,
    trial: optuna.trial.Trial | optuna.trial.FrozenTrial,
    weights: bytes,
) -> str:
    """Store a trial's ``torch.save``-d state_dict as its artifact; return the artifact id."""
    with tempfile.TemporaryDirectory(prefix="sparse-nas-weights-") as tmp:
        path = Path(tmp) / f"trial-{trial.number}-state_dict.pt"
        path.write_bytes(weights)
        return upload_artifact(
            artifact_store=store,
            file_path=str(path),
            study_or_trial=trial,
            storage=storage,
            mimetype="application/x-pytorch",
        )


def load_weights(store: FileSystemArtifactStore, artifact_id: str) -> dict[str, torch.Tensor]:
    """A trial's trained state_dict, read back from its artifact."""
    with tempfile.TemporaryDirectory(prefix="sparse-nas-weights-") as tmp:
        path = Path(tmp) / "state_dict.pt"
        download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
        return torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
