"""Tests of sparse_nas.spec: SearchJobSpec's schema, validation messages and helpers."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError

from hw_models import device_from_dict, get_device, list_devices
from hw_models.runtimes import RUNTIMES
from search_spaces.families import get_search_space, search_space_names
from sparse_nas.datasets import (
    DatasetConfig,
    DatasetError,
    available_datasets,
    dataset_info,
    input_shape_for,
    load_dataset,
)
from sparse_nas.spec import STRATEGIES, SearchJobSpec, SpecFileError, TrainingSpec
from sparse_nas.training import TrainConfig
from tests.sparse_nas_tests.test_datasets_fsdd import write_fsdd
from tests.sparse_nas_tests.test_datasets_har import write_har

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
}
FULL: dict[str, Any] = {
    "name": "digits on an F446",
    "seed": 3,
    "dataset": {
        "name": "digits",
        "options": {},
        "val_fraction": 0.2,
        "train_subset": 500,
        "binary_groups": [[0, 1], [2]],
    },
    "search_space": {"name": "sparse_cnn", "options": {"max_conv_blocks": 2, "channels": [4, 16]}},
    "device": "stm32f446re",
    "runtime": "ideal",
    "budgets": {"max_flash_bytes": 262144, "max_sram_bytes": 65536, "max_latency_ms": 50},
    "objectives": ["accuracy", "sram_bytes", "latency_ms"],
    "strategy": "nsga2",
    "n_trials": 12,
    "initial_trials": 4,
    "training": {
        "epochs": 3,
        "batch_size": 64,
        "lr": 0.01,
        "schedule": "onecycle",
        "early_stopping": True,
        "min_epochs": 2,
    },
    "execution": {"backend": "ray", "ray_address": "127.0.0.1:6379", "concurrency": 2, "cpus_per_trial": 1},
}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def spec_with(**changes: Any) -> dict[str, Any]:
    """BASE with top-level fields replaced (a value of None removes the field)."""
    data = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def only_error(data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        SearchJobSpec.model_validate(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return errors[0]


# --- valid specs --------------------------------------------------------------------


def test_defaults() -> None:
    spec = SearchJobSpec.model_validate(BASE)
    assert spec.seed == 0 and spec.runtime == "tflm" and spec.strategy == "mobo"
    assert spec.objectives == ("accuracy", "flash_bytes", "sram_bytes")
    assert spec.directions() == ["maximize", "minimize", "minimize"]
    assert (spec.n_trials, spec.initial_trials) == (40, 10)
    assert spec.budgets.max_flash_bytes is None and spec.budgets.max_sram_bytes is None
    assert spec.execution.backend == "inprocess" and spec.execution.concurrency == 1
    assert spec.training.early_stopping is False and spec.training.min_epochs == 1


def test_full_spec_round_trips_through_dict_and_json() -> None:
    spec = SearchJobSpec.model_validate(FULL)
    assert SearchJobSpec.model_validate(spec.to_dict()) == spec
    assert SearchJobSpec.model_validate_json(spec.to_json()) == spec
    assert json.loads(spec.to_json()) == spec.to_dict()
    for key, value in FULL.items():
        if isinstance(value, dict):
            assert spec.to_dict()[key].items() >= value.items(), key
        else:
            assert spec.to_dict()[key] == value, key


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_spec_files_round_trip(tmp_path: Path, suffix: str) -> None:
    spec = SearchJobSpec.model_validate(FULL)
    path = tmp_path / f"job{suffix}"
    path.write_text(spec.to_json() if suffix == ".json" else yaml.safe_dump(spec.to_dict()))
    assert SearchJobSpec.from_file(path) == spec


def test_a_hand_written_yaml_file_validates(tmp_path: Path) -> None:
    path = tmp_path / "kws.yaml"
    path.write_text(
        "dataset:\n  name: fsdd\n  options: {layout: sequence}\nsearch_space:\n  name: rnn\n"
        "device: stm32f746zg\nbudgets:\n  max_sram_bytes: 131072\nobjectives: [accuracy, latency_ms]\n"
    )
    spec = SearchJobSpec.from_file(path)
    assert spec.dataset.input_shape() == (49, 10)
    assert spec.directions() == ["maximize", "minimize"]


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("job.toml", "", "expected a .json, .yaml or .yml file"),
        ("job.json", "{", "is not valid JSON"),
        ("job.yaml", "dataset: [", "is not valid YAML"),
        ("job.yaml", "- a list", "expected a mapping of fields, got list"),
    ],
)
def test_unreadable_spec_files_say_why(tmp_path: Path, name: str, text: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecFileError, match=problem):
        SearchJobSpec.from_file(path)
    with pytest.raises(SpecFileError, match="does not exist"):
        SearchJobSpec.from_file(tmp_path / "missing.yaml")


def test_helpers_give_what_the_engine_needs() -> None:
    spec = SearchJobSpec.model_validate(FULL)
    assert spec.dataset_config() == DatasetConfig(
        "digits", seed=3, val_fraction=0.2, train_subset=500, binary_groups=((0, 1), (2,))
    )
    space = spec.build_search_space()
    assert (space.name, space.input_shape, space.num_classes) == ("sparse_cnn", (1, 8, 8), 2)
    assert space.options["channels"] == [4, 16]
    assert spec.device_spec() == get_device("stm32f446re")
    assert spec.runtime_profile() is RUNTIMES["ideal"]
    assert spec.limits() == {"flash_bytes": 262144, "sram_bytes": 65536, "latency_ms": 50.0}
    assert spec.directions() == ["maximize", "minimize", "minimize"]
    assert spec.minimum_costs() == space.minimum_costs("stm32f446re", "ideal")


def test_train_config_maps_every_trainer_field() -> None:
    spec = SearchJobSpec.model_validate(FULL)
    config = spec.training.train_config(seed=7)
    assert config == TrainConfig(epochs=3, batch_size=64, lr=0.01, schedule="onecycle", seed=7)
    trainer_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}
    assert set(TrainingSpec.model_fields) - {"early_stopping", "min_epochs"} == trainer_fields


def test_training_defaults_are_the_trainers() -> None:
    assert TrainingSpec().train_config(seed=0) == TrainConfig()


def test_budgets_above_the_device_are_allowed_and_the_device_binds() -> None:
    budgets = {"max_flash_bytes": 10 * 2**20, "max_sram_bytes": 10 * 2**20}
    spec = SearchJobSpec.model_validate(spec_with(budgets=budgets))
    device = get_device("stm32f446re")
    assert spec.limits() == {"flash_bytes": device.flash_bytes, "sram_bytes": device.sram_bytes}


def test_initial_trials_default_shrinks_to_a_small_job() -> None:
    assert SearchJobSpec.model_validate(spec_with(n_trials=4)).initial_trials == 4
    assert SearchJobSpec.model_validate(spec_with(n_trials=400)).initial_trials == 10


def test_custom_device_object() -> None:
    data = get_device("stm32f446re").to_dict() | {"name": "my_board", "sram_bytes": 96 * 1024}
    spec = SearchJobSpec.model_validate(spec_with(device=data, budgets={"max_sram_bytes": 200_000}))
    assert spec.device_spec() == device_from_dict(data)
    assert spec.limits()["sram_bytes"] == 96 * 1024
    assert SearchJobSpec.model_validate(spec.to_dict()) == spec


def test_dataset_options_that_change_the_shape_select_fitting_spaces() -> None:
    sequence = {"name": "fsdd", "options": {"layout": "sequence"}}
    spec = SearchJobSpec.model_validate(spec_with(dataset=sequence, search_space={"name": "rnn"}))
    assert spec.build_search_space().input_shape == (49, 10)
    error = only_error(spec_with(dataset={"name": "fsdd"}, search_space={"name": "rnn"}))
    assert error["loc"] == ("search_space", "name")
    assert "(1, 49, 10)" in error["msg"] and "search spaces that fit: ds_cnn, mbv2, sparse_cnn" in error["msg"]


# --- invalid specs ------------------------------------------------------------------

# fmt: off
INVALID = [
    pytest.param(spec_with(dataset={"name": "mnistt"}), ("dataset", "name"), available_datasets(), id="dataset"),
    pytest.param(spec_with(search_space={"name": "resnet"}), ("search_space", "name"), search_space_names(), id="space"),
    pytest.param(spec_with(device="stm32"), ("device",), [d.name for d in list_devices()], id="device"),
    pytest.param(spec_with(runtime="tvm"), ("runtime",), list(RUNTIMES), id="runtime"),
    pytest.param(spec_with(strategy="bayes"), ("strategy",), [f"'{s}'" for s in STRATEGIES], id="strategy"),
    pytest.param(spec_with(objectives=["accuracy", "energy_mj"]), ("objectives", 1), ["'flash_bytes'", "'latency_ms'"], id="objective"),
    pytest.param(spec_with(objectives=["accuracy", "macs", "macs"]), ("objectives",), ["macs given more than once", "flash_bytes, sram_bytes, macs, latency_ms"], id="duplicate-objective"),
    pytest.param(spec_with(objectives=["flash_bytes", "accuracy"]), ("objectives",), ["must start with 'accuracy'"], id="accuracy-not-first"),
    pytest.param(spec_with(objectives=["accuracy"]), ("objectives",), ["expected 2-4 names"], id="one-objective"),
    pytest.param(spec_with(objectives=["accuracy", "flash_bytes", "sram_bytes", "macs", "latency_ms"]), ("objectives",), ["expected 2-4 names"], id="five-objectives"),
    pytest.param(spec_with(budgets={"max_sram_bytes": 0}), ("budgets", "max_sram_bytes"), ["must be positive, got 0"], id="zero-budget"),
    pytest.param(spec_with(budgets={"max_flash_bytes": -5}), ("budgets", "max_flash_bytes"), ["must be positive"], id="negative-budget"),
    pytest.param(spec_with(budgets={"max_latency_ms": 0.0}), ("budgets", "max_latency_ms"), ["must be positive"], id="zero-latency"),
    pytest.param(spec_with(budgets={"max_flash_bytes": True}), ("budgets", "max_flash_bytes"), ["valid integer"], id="bool-budget"),
    pytest.param(spec_with(n_trials=5, initial_trials=6), ("initial_trials",), ["at most n_trials (5), got 6"], id="initial-trials"),
    pytest.param(spec_with(n_trials=0), ("n_trials",), ["greater than or equal to 1"], id="no-trials"),
    pytest.param(spec_with(budget={"max_sram_bytes": 1}), ("budget",), ["unknown field 'budget'", "budgets"], id="unknown-field"),
    pytest.param(spec_with(budgets={"max_ram_bytes": 1}), ("budgets", "max_ram_bytes"), ["max_sram_bytes"], id="unknown-budget"),
    pytest.param(spec_with(search_space={"name": "sparse_cnn", "options": {"channels": [0, 8]}}), ("search_space", "options", "channels"), ["1 <= low <= high"], id="space-option-value"),
    pytest.param(spec_with(search_space={"name": "sparse_cnn", "options": {"chanels": [4, 8]}}), ("search_space", "options"), ["'chanels'", "'channels'"], id="space-option-name"),
    pytest.param(spec_with(dataset={"name": "fsdd", "options": {"layout": "3d"}}), ("dataset", "options", "layout"), ["'image', 'sequence'"], id="dataset-option-value"),
    pytest.param(spec_with(dataset={"name": "fsdd", "options": {"frame": 4}}), ("dataset", "options"), ["known options:", "frames"], id="dataset-option-name"),
    pytest.param(spec_with(dataset={"name": "digits", "val_fraction": 1.0}), ("dataset", "val_fraction"), ["[0, 1)"], id="val-fraction"),
    pytest.param(spec_with(dataset={"name": "digits", "binary_groups": [[1], [1]]}), ("dataset", "binary_groups"), ["disjoint"], id="binary-groups"),
    pytest.param(spec_with(training={"schedule": "step"}), ("training", "schedule"), ["'cosine', 'onecycle'"], id="schedule"),
    pytest.param(spec_with(training={"epochs": 2, "min_epochs": 3}), ("training", "min_epochs"), ["[1, epochs=2]"], id="min-epochs"),
    pytest.param(spec_with(execution={"concurrency": 4}), ("execution", "concurrency"), ["backend 'ray'"], id="inprocess-concurrency"),
    pytest.param(spec_with(execution={"ray_address": "auto"}), ("execution", "ray_address"), ["backend 'ray'"], id="inprocess-address"),
    pytest.param(spec_with(execution={"backend": "dask"}), ("execution", "backend"), ["'inprocess' or 'ray'"], id="backend"),
    pytest.param(spec_with(seed=-1), ("seed",), ["greater than or equal to 0"], id="seed"),
    pytest.param(spec_with(device=None), ("device",), ["required"], id="no-device"),
    pytest.param(spec_with(seed=2**32), ("seed",), ["less than or equal to 4294967295"], id="seed-too-big"),
    pytest.param(spec_with(n_trials=10**15), ("n_trials",), ["less than or equal to 100000"], id="too-many-trials"),
    pytest.param(spec_with(training={"epochs": 10**9}), ("training", "epochs"), ["less than or equal to 10000"], id="too-many-epochs"),
    pytest.param(spec_with(training={"batch_size": 10**12}), ("training", "batch_size"), ["less than or equal to 1048576"], id="huge-batch"),
    pytest.param(spec_with(budgets={"max_sram_bytes": 10**30}), ("budgets", "max_sram_bytes"), ["less than or equal to 1099511627776"], id="huge-budget"),
    pytest.param(spec_with(execution={"backend": "ray", "concurrency": 10**9}), ("execution", "concurrency"), ["less than or equal to 4096"], id="huge-concurrency"),
    pytest.param(spec_with(dataset={"name": "digits", "train_subset": 10**20}), ("dataset", "train_subset"), ["less than or equal to 2147483647"], id="huge-subset"),
    pytest.param(spec_with(device=get_device("stm32f446re").to_dict() | {"name": "big", "flash_bytes": 10**30}), ("device", "flash_bytes"), ["must be at most 1,099,511,627,776"], id="device-flash-too-big"),
]
# fmt: on


@pytest.mark.parametrize(("data", "loc", "mentions"), INVALID)
def test_invalid_specs_name_the_field_and_what_is_valid(data: dict, loc: tuple, mentions: list[str]) -> None:
    error = only_error(data)
    assert error["loc"] == loc
    for text in mentions:
        assert text in error["msg"], (text, error["msg"])


def test_independent_errors_are_reported_together() -> None:
    with pytest.raises(ValidationError) as info:
        SearchJobSpec.model_validate(spec_with(strategy="x", budgets={"max_sram_bytes": 0}, seed=-1))
    assert {e["loc"] for e in info.value.errors()} == {("strategy",), ("budgets", "max_sram_bytes"), ("seed",)}


def test_invalid_custom_device_names_its_field() -> None:
    data = get_device("stm32f446re").to_dict() | {"name": "my_board", "core": "z80"}
    error = only_error(spec_with(device=data))
    assert error["loc"] == ("device", "core") and "cortex-m4" in error["msg"] and error["input"] == "z80"


# --- budgets the space cannot meet ---------------------------------------------------


def test_impossible_sram_budget_reports_the_true_minimum() -> None:
    # Oracle: the smallest costs computed here, independently of the spec.
    minimum = get_search_space("sparse_cnn", (1, 28, 28), 10).minimum_costs("stm32f446re", "tflm")
    error = only_error(spec_with(dataset={"name": "mnist"}, budgets={"max_sram_bytes": 1000}))
    assert error["loc"] == ("budgets", "max_sram_bytes")
    assert error["msg"].startswith(
        f"1,000 B is below the smallest SRAM any sparse_cnn network needs on stm32f446re "
        f"({round(minimum['sram_bytes']):,} B, tflm runtime); raise the budget or change search_space.options"
    )
    assert f"flash {minimum['flash_bytes']:,.0f} B" in error["msg"]


def test_each_unmeetable_budget_is_its_own_error() -> None:
    minimum = get_search_space("sparse_cnn", (1, 8, 8), 10).minimum_costs("stm32f446re", "tflm")
    budgets = {
        "max_flash_bytes": int(minimum["flash_bytes"]) - 1,
        "max_sram_bytes": int(minimum["sram_bytes"]),
        "max_latency_ms": minimum["latency_ms"] / 2,
    }
    with pytest.raises(ValidationError) as info:
        SearchJobSpec.model_validate(spec_with(budgets=budgets))
    errors = {e["loc"]: e["msg"] for e in info.value.errors()}
    assert set(errors) == {("budgets", "max_flash_bytes"), ("budgets", "max_latency_ms")}
    assert f"({minimum['latency_ms']:.3g} ms, tflm runtime)" in errors[("budgets", "max_latency_ms")]


def test_budgets_exactly_at_the_minimum_are_accepted() -> None:
    minimum = get_search_space("sparse_cnn", (1, 8, 8), 10).minimum_costs("stm32f446re", "tflm")
    budgets = {"max_flash_bytes": round(minimum["flash_bytes"]), "max_sram_bytes": round(minimum["sram_bytes"])}
    assert SearchJobSpec.model_validate(spec_with(budgets=budgets)).budgets.max_sram_bytes == budgets["max_sram_bytes"]


def test_a_device_too_small_for_the_space_is_rejected_at_the_device() -> None:
    device = get_device("atmega328p")
    minimum = get_search_space("sparse_cnn", (1, 8, 8), 10).minimum_costs(device, "tflm")
    assert minimum["flash_bytes"] > device.flash_bytes  # the premise of this test
    error = only_error(spec_with(device="atmega328p", budgets={"max_flash_bytes": 10**7}))
    assert error["loc"] == ("device",)
    assert f"atmega328p has {device.flash_bytes:,} B of flash" in error["msg"]
    assert f"({round(minimum['flash_bytes']):,} B, tflm runtime)" in error["msg"]


# --- input shapes without data --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fsdd", {}),
        ("fsdd", {"layout": "sequence"}),
        ("fsdd", {"features": "logmel", "n_mels": 32, "layout": "sequence"}),
        ("fsdd", {"frames": 24, "window_ms": 30, "hop_ms": 10, "n_mfcc": 13}),
        ("uci_har", {}),
        ("uci_har", {"layout": "image"}),
        ("digits", {}),
    ],
)
def test_input_shape_for_matches_the_loaded_data(tmp_path: Path, name: str, options: dict) -> None:
    # Oracle: the shape of what the loader really produces, from small synthetic files.
    {"fsdd": write_fsdd, "uci_har": write_har, "digits": lambda _: None}[name](tmp_path)
    splits = load_dataset(DatasetConfig(name, options=options), tmp_path)
    assert input_shape_for(name, options) == splits.input_shape == tuple(splits.test.x.shape[1:])


@pytest.mark.parametrize("name", available_datasets())
def test_input_shape_for_default_options_is_the_registered_shape(name: str) -> None:
    assert input_shape_for(name) == dataset_info(name).input_shape


def test_input_shape_for_checks_the_options() -> None:
    with pytest.raises(DatasetError, match="exceeds"):
        input_shape_for("fsdd", {"n_mfcc": 50})
    with pytest.raises(DatasetError, match="unknown dataset"):
        input_shape_for("imagenet", {})


def test_importing_the_spec_does_not_import_torch() -> None:
    code = "import sys, sparse_nas.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("language", ["yaml", "json"])
def test_the_examples_in_the_docs_are_valid(tmp_path: Path, language: str) -> None:
    text = (REPO_ROOT / "docs" / "job_spec.md").read_text()
    examples = re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)
    assert examples
    for i, example in enumerate(examples):
        path = tmp_path / f"example{i}.{language}"
        path.write_text(example)
        spec = SearchJobSpec.from_file(path)
        assert SearchJobSpec.model_validate(spec.to_dict()) == spec
