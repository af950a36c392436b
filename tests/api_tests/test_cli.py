"""The `sparse-nas devices` and `sparse-nas cost` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from api.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "ds_cnn_kws.json")


def test_devices_table(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "stm32f446re" in out and "128.0" in out


def test_devices_json(capsys):
    assert main(["devices", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert "rp2040" in names


def test_cost_table_and_json(capsys):
    assert main(["cost", EXAMPLE, "--device", "stm32f446re"]) == 0
    out = capsys.readouterr().out
    assert "conv1 (+bn1, relu1)" in out and "latency" in out
    assert main(["cost", EXAMPLE, "--device", "stm32f446re", "--runtime", "ideal", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "ideal" and report["sram_bytes"] == report["working_memory_bytes"]


def test_cost_with_a_custom_device_file(tmp_path, capsys):
    from hw_models import get_device

    data = get_device("stm32f446re").to_dict() | {"name": "my_board", "clock_hz": 90e6}
    path = tmp_path / "my_board.json"
    path.write_text(json.dumps(data))
    assert main(["cost", EXAMPLE, "--device-file", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "my_board"


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["cost", EXAMPLE, "--device", "nope"]) == 2
    assert "unknown device 'nope'" in capsys.readouterr().err
    assert main(["cost", str(tmp_path / "missing.json"), "--device", "rp2040"]) == 2
    assert "cannot read network file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "inputs": [], "layers": [], "outputs": []}')
    assert main(["cost", str(bad), "--device", "rp2040"]) == 2
    assert "layers: a network needs at least one layer" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "devices"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "atmega328p" in result.stdout


def test_datasets_list_uses_the_data_dir_setting(monkeypatch, tmp_path, capsys):
    from api.settings import get_settings

    monkeypatch.setenv("SPARSE_NAS_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert main(["datasets"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "digits" in out and "bundled" in out and str(tmp_path) in out


def test_datasets_download_errors(tmp_path, capsys):
    assert main(["datasets", "download"]) == 2
    assert "name the dataset" in capsys.readouterr().err
    assert main(["datasets", "download", "imagenet", "--data-dir", str(tmp_path)]) == 2
    assert "imagenet" in capsys.readouterr().err
    # digits ships with scikit-learn: nothing to fetch, no network touched.
    assert main(["datasets", "download", "digits", "--data-dir", str(tmp_path)]) == 0
    assert "0 file(s)" in capsys.readouterr().out
