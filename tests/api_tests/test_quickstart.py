"""`sparse-nas quickstart`: the README's first command, run as a user runs it.

Each test runs the command in a subprocess with only SPARSE_NAS_STATE_DIR (and a
port) set, as on a fresh machine, and reads what it prints.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from api.quickstart import free_port, idempotency_key, port_is_free
from api.schemas import EXAMPLE_JOB_SPEC

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_SPEC = ROOT / "examples" / "quickstart.yaml"
JOB_LINE = re.compile(r"^job (\w+) (submitted|found|resumed)", re.MULTILINE)
DASHBOARD_LINE = re.compile(r"^dashboard: (http://127\.0\.0\.1:\d+/)#/jobs/(\w+)$", re.MULTILINE)


def run_quickstart(spec: Path, state_dir: Path, *extra: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SPARSE_NAS_")}
    env["SPARSE_NAS_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "quickstart", str(spec), "--port", str(free_port("127.0.0.1")), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(EXAMPLE_JOB_SPEC))
    return path


@pytest.mark.slow
def test_quickstart_runs_the_job_prints_its_front_and_finds_it_again(tiny_spec, tmp_path):
    first = run_quickstart(tiny_spec, tmp_path / "state", "--exit-when-done")
    assert first.returncode == 0, first.stdout + first.stderr
    job_id = JOB_LINE.search(first.stdout).group(1)
    assert JOB_LINE.search(first.stdout).group(2) == "submitted"
    trial_lines = re.findall(r"^trial +(\d+) ", first.stdout, re.MULTILINE)
    assert sorted(map(int, trial_lines)) == list(range(EXAMPLE_JOB_SPEC["n_trials"]))
    assert f"job {job_id} succeeded: 3/3 trials" in first.stdout
    assert re.search(r"^Pareto front: \d+ of 3 trials; hypervolume 0\.\d+", first.stdout, re.MULTILINE)
    assert DASHBOARD_LINE.search(first.stdout).group(2) == job_id
    assert (tmp_path / "state" / "sparse-nas.db").exists() and (tmp_path / "state" / "service.log").exists()

    # The same spec again: the same job, shown as it is, not searched again.
    again = run_quickstart(tiny_spec, tmp_path / "state", "--exit-when-done")
    assert again.returncode == 0, again.stdout + again.stderr
    assert JOB_LINE.search(again.stdout).groups() == (job_id, "found")
    assert f"job {job_id} succeeded: 3/3 trials" in again.stdout


def test_a_bad_spec_is_refused_with_its_field_and_the_service_stops(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(EXAMPLE_JOB_SPEC | {"budgets": {"max_sram_bytes": -5}}))
    result = run_quickstart(spec, tmp_path / "state", "--exit-when-done", timeout_s=180)
    assert result.returncode == 2
    assert "body.budgets.max_sram_bytes" in result.stderr
    log = (tmp_path / "state" / "service.log").read_text()
    assert "Application shutdown complete" in log


@pytest.mark.slow
def test_ctrl_c_stops_the_service_and_its_worker(tiny_spec, tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("SPARSE_NAS_")}
    env["SPARSE_NAS_STATE_DIR"] = str(tmp_path / "state")
    # Its own process group, as a shell gives a foreground job: Ctrl-C signals the group.
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "quickstart", str(tiny_spec), "--port", str(free_port("127.0.0.1"))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith("the service keeps running"):
                break
        url = DASHBOARD_LINE.search("".join(output)).group(1)
        with urllib.request.urlopen(f"{url}readyz", timeout=10) as response:
            assert response.status == 200
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, "".join(output) + rest
    assert "stopping the service" in rest
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not port_is_free("127.0.0.1", int(url.rsplit(":", 1)[1].rstrip("/"))):
        time.sleep(0.2)
    assert port_is_free("127.0.0.1", int(url.rsplit(":", 1)[1].rstrip("/")))
    log = (tmp_path / "state" / "service.log").read_text()
    assert "Application shutdown complete" in log
    # No process of this service is left: not the API (in the group) nor its worker (in
    # its own session; its id in the log is host-pid-random).
    survivors = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert survivors == []
    worker_pids = {int(pid) for pid in re.findall(r"worker \S+-(\d+)-[0-9a-f]{6}: running job", log)}
    assert len(worker_pids) == 1
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_idempotency_key_follows_the_spec():
    assert idempotency_key(EXAMPLE_JOB_SPEC) == idempotency_key(dict(reversed(EXAMPLE_JOB_SPEC.items())))
    assert idempotency_key(EXAMPLE_JOB_SPEC) != idempotency_key(EXAMPLE_JOB_SPEC | {"n_trials": 4})


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.xdist_group("ray")
def test_the_readme_quickstart_spec_runs_on_a_local_ray_and_succeeds(tmp_path):
    spec = yaml.safe_load(QUICKSTART_SPEC.read_text())
    assert spec["execution"]["backend"] == "ray" and spec["dataset"]["name"] == "digits"
    result = run_quickstart(QUICKSTART_SPEC, tmp_path / "state", "--exit-when-done")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"succeeded: {spec['n_trials']}/{spec['n_trials']} trials" in result.stdout
    front = re.search(r"^Pareto front: (\d+) of", result.stdout, re.MULTILINE)
    assert int(front.group(1)) >= 1
