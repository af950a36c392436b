"""``set_trial_attrs``: a trial's attributes, constraints and per-epoch values in one transaction.

The batched write must leave exactly what Optuna's public calls (``set_user_attr``,
``set_constraint``, ``set_trial_intermediate_value``) leave, on SQLite, on PostgreSQL
and on storages that are not relational, and must commit once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import event

from sparse_nas.search.storage import open_storage, set_trial_attrs, sqlite_url

USER_ATTRS: dict[str, Any] = {"flash_bytes": 41234.0, "sram_bytes": 9000.0, "status": "complete", "note": [1, "a"]}
CONSTRAINTS = {"flash_bytes": -0.25, "sram_bytes": 0.5}
EPOCH_ACCURACIES = {1: 0.5, 2: 0.75, 3: 0.875}


def _public(trial: optuna.trial.Trial) -> None:
    for step, value in EPOCH_ACCURACIES.items():
        trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
    for key, value in USER_ATTRS.items():
        trial.set_user_attr(key, value)
    for name, value in CONSTRAINTS.items():
        trial.set_constraint(name, value)


def _batched(trial: optuna.trial.Trial) -> None:
    set_trial_attrs(trial, USER_ATTRS, CONSTRAINTS, EPOCH_ACCURACIES)


def _compare(storage: Any) -> None:
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    public, batched = study.ask(), study.ask()
    _public(public)
    _batched(batched)
    # The trial objects the driver holds see their own writes before the tell.
    assert batched.user_attrs == public.user_attrs == USER_ATTRS
    for trial in (public, batched):
        study.tell(trial, [0.9, 1000.0])
    first, second = study.get_trials()
    assert second.user_attrs == first.user_attrs == USER_ATTRS
    assert second.constraints == first.constraints == CONSTRAINTS
    assert second.intermediate_values == first.intermediate_values == EPOCH_ACCURACIES
    assert second.system_attrs == first.system_attrs


def test_sqlite_batched_write_equals_the_public_calls_and_commits_once(tmp_path: Path) -> None:
    storage = open_storage(sqlite_url(tmp_path / "study.db"))
    _compare(storage)
    study = optuna.load_study(storage=storage, study_name=optuna.get_all_study_names(storage)[0])
    batched, public = study.ask(), study.ask()
    commits: list[int] = []
    event.listen(storage.engine, "commit", lambda _conn: commits.append(1))
    _batched(batched)
    assert len(commits) == 1
    commits.clear()
    _public(public)  # what the batching saves: a commit per row (set_constraint also reads first)
    assert len(commits) >= len(USER_ATTRS) + len(CONSTRAINTS) + len(EPOCH_ACCURACIES)


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_postgresql_batched_write_equals_the_public_calls(postgres_url: str) -> None:
    storage = open_storage(postgres_url)
    try:
        _compare(storage)
    finally:
        storage.engine.dispose()


def test_in_memory_storage_falls_back_to_the_public_calls() -> None:
    _compare(optuna.storages.InMemoryStorage())


def test_a_failed_batch_writes_nothing(tmp_path: Path) -> None:
    storage = open_storage(sqlite_url(tmp_path / "study.db"))
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with pytest.raises(TypeError):  # the last attribute is not JSON: the whole batch rolls back
        set_trial_attrs(trial, {"flash_bytes": 1.0, "bad": object()}, {"flash_bytes": -1.0}, {1: 0.5})
    frozen = study.get_trials()[0]
    assert frozen.user_attrs == {} and frozen.constraints == {} and frozen.intermediate_values == {}


def test_a_nan_constraint_is_refused_with_its_name() -> None:
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match=r"'sram_bytes'.*NaN"):
        set_trial_attrs(trial, {}, {"sram_bytes": math.nan})
