"""The dashboard in headless Chromium against a real service with real jobs (see conftest.py)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser_tests.conftest import (
    BIG_TRIALS,
    ROOT,
    SMALL_SPEC,
    SMALL_TRIALS,
    TOKEN,
    Page,
    Service,
    publish_screenshot,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]

RENDER_BOUND_S = 30.0
"""Generous bound for the 1,000-trial job page to draw every point (it takes a few seconds)."""

POINTS = "#pareto-plot .scatterlayer path.point"


def plotted_x(page) -> list[float]:
    """Every x value the Pareto plot draws as a point (marker traces only), sorted."""
    return sorted(
        page.evaluate(
            """() => document.getElementById('pareto-plot').data
                 .filter(t => t.mode === 'markers' && t.visible !== 'legendonly')
                 .flatMap(t => t.x)"""
        )
    )


def wait_for_points(page, count: int, timeout_ms: float = 30_000) -> None:
    page.wait_for_function(
        "([selector, n]) => document.querySelectorAll(selector).length === n", arg=[POINTS, count], timeout=timeout_ms
    )


# --- pages --------------------------------------------------------------------------------


def test_jobs_page_lists_the_jobs_with_progress_and_no_console_errors(dashboard: Page, service: Service):
    page = dashboard.page
    dashboard.goto("#/jobs")
    for job_id in service.jobs.values():
        page.wait_for_selector(f'#jobs-table tr[data-job-id="{job_id}"]')
    small = page.locator(f'#jobs-table tr[data-job-id="{service.jobs["small"]}"]')
    assert small.locator(".badge").inner_text() == "succeeded"
    assert small.locator(".progress .count").inner_text() == f"{SMALL_TRIALS} / {SMALL_TRIALS}"
    best = service.get(f"/api/jobs/{service.jobs['small']}")["best_accuracy"]
    assert f"{best * 100:.1f} %" in small.inner_text()
    big = page.locator(f'#jobs-table tr[data-job-id="{service.jobs["big"]}"]')
    assert big.locator(".progress .count").inner_text() == f"{BIG_TRIALS} / {BIG_TRIALS}"
    queued = page.locator(f'#jobs-table tr[data-job-id="{service.jobs["queued"]}"]')
    assert queued.locator('[data-action="cancel"]').count() == 1
    failed = page.locator(f'#jobs-table tr[data-job-id="{service.jobs["failed"]}"]')
    assert failed.locator('[data-action="resume"]').count() == 1
    page.wait_for_selector("#job-form #f-device option", state="attached")
    assert "KiB flash" in page.locator("#f-device option").first.inner_text()
    assert "SRAM" in page.locator("#device-card").inner_text()
    dashboard.screenshot("jobs")
    assert dashboard.console_errors == []


def test_job_page_plots_every_trial_of_a_real_job(dashboard: Page, service: Service):
    page = dashboard.page
    job_id = service.jobs["small"]
    dashboard.goto(f"#/jobs/{job_id}")
    wait_for_points(page, SMALL_TRIALS)
    trials = service.all_trials(job_id)
    pareto = service.get(f"/api/jobs/{job_id}/pareto")
    assert len(trials) == SMALL_TRIALS
    assert plotted_x(page) == pytest.approx(sorted(t["costs"]["flash_bytes"] / 1024 for t in trials))
    page.wait_for_selector("#hv-plot .scatterlayer")
    page.wait_for_selector("#parcoords-plot .parcoords")
    assert page.locator("#kpi-hv .value").inner_text() == f"{pareto['hypervolume']:.4f}"
    assert page.locator("#trial-table tbody tr").count() == SMALL_TRIALS
    budget = page.locator("#pareto-plot .annotation-text", has_text="Flash budget")
    assert budget.text_content() == "Flash budget 128.0 KiB"
    publish_screenshot(dashboard.screenshot("job-small"), "dashboard.png")
    assert dashboard.console_errors == []


def test_axis_pickers_change_the_plot(dashboard: Page, service: Service):
    page = dashboard.page
    job_id = service.jobs["small"]
    dashboard.goto(f"#/jobs/{job_id}")
    wait_for_points(page, SMALL_TRIALS)
    trials = service.all_trials(job_id)
    assert page.locator("#pareto-plot .xtitle").text_content() == "Flash (KiB)"
    before = [p.bounding_box()["x"] for p in page.locator(POINTS).all()]

    page.select_option("#x-metric", "sram_bytes")
    page.wait_for_function("() => document.querySelector('#pareto-plot .xtitle').textContent === 'SRAM (KiB)'")
    assert plotted_x(page) == pytest.approx(sorted(t["costs"]["sram_bytes"] / 1024 for t in trials))
    assert [p.bounding_box()["x"] for p in page.locator(POINTS).all()] != before

    page.select_option("#y-metric", "macs")
    page.wait_for_function("() => document.querySelector('#pareto-plot .ytitle').textContent === 'MACs'")
    wait_for_points(page, SMALL_TRIALS)
    page.select_option("#color-metric", "latency_ms")
    page.wait_for_selector("#pareto-plot .colorbar")
    assert dashboard.console_errors == []


def test_clicking_a_point_opens_the_trial_panel(dashboard: Page, service: Service, tmp_path):
    page = dashboard.page
    job_id = service.jobs["small"]
    dashboard.goto(f"#/jobs/{job_id}")
    wait_for_points(page, SMALL_TRIALS)
    # Where the first point of the Pareto-front trace is drawn, from Plotly's own axes.
    target = page.evaluate(
        """() => {
            const gd = document.getElementById('pareto-plot');
            const trace = gd.data.find(t => t.meta === 'front');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
            return {number: trace.customdata[0], x: box.left + xa._offset + xa.l2p(trace.x[0]),
                    y: box.top + ya._offset + ya.l2p(trace.y[0])};
        }"""
    )
    page.mouse.click(target["x"], target["y"])
    panel = page.locator("#trial-panel")
    panel.wait_for()
    number = int(panel.get_attribute("data-trial"))
    assert number == target["number"]
    assert page.url.endswith(f"#/jobs/{job_id}/trials/{number}")
    trial = service.get(f"/api/jobs/{job_id}/trials/{number}")
    assert page.locator("#trial-title").inner_text() == f"Trial {number}"
    assert f"{trial['costs']['flash_bytes'] / 1024:.1f} KiB" in panel.inner_text()
    # The per-layer table is the /layers answer; its layers add up to the trial's recorded MACs.
    page.wait_for_selector("#layer-table tbody tr")
    layers = service.get(f"/api/jobs/{job_id}/trials/{number}/layers")
    assert page.locator("#layer-table tbody tr").count() == len(layers["layers"])
    assert sum(layer["macs"] for layer in layers["layers"]) == trial["costs"]["macs"]
    page.wait_for_selector("#compression-plot .barlayer")
    page.wait_for_selector("#curve-plot .scatterlayer")
    assert panel.locator("#architecture .block").count() > 1
    assert sorted(panel.locator("[data-export]").evaluate_all("els => els.map(e => e.dataset.export)")) == [
        "onnx",
        "onnx-int8",
        "pytorch",
        "tflite",
    ]
    dashboard.screenshot("trial-panel", full_page=False)
    # The export button downloads the bundle of this trial (with the token, through fetch).
    with page.expect_download(timeout=120_000) as download:
        panel.locator('[data-export="pytorch"]').click()
    bundle = tmp_path / download.value.suggested_filename
    download.value.save_as(bundle)
    assert bundle.name.startswith(f"{job_id}-trial-{number}-") and bundle.name.endswith("-pytorch.zip")
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["job"]["id"] == job_id and manifest["trial"]["number"] == number
    assert manifest["format"] == "pytorch"
    page.keyboard.press("Escape")
    panel.wait_for(state="detached")
    assert page.url.endswith(f"#/jobs/{job_id}")
    assert dashboard.console_errors == []


def test_submit_form_shows_the_api_error_beside_the_field_then_creates_the_job(dashboard: Page, service: Service):
    page = dashboard.page
    dashboard.goto("#/jobs")
    page.wait_for_selector("#job-form #f-device option", state="attached")
    page.fill("#f-name", "from-the-form")
    page.select_option("#f-strategy", "random")
    page.fill("#f-n_trials", "2")
    page.fill("#f-training-epochs", "1")
    page.fill("#f-budgets-max_sram_bytes", "-1")
    page.click("#submit-job")
    error = page.locator('.field[data-field="budgets.max_sram_bytes"] .field-error')
    error.wait_for()
    assert "must be positive" in error.inner_text()
    assert page.locator('.field[data-field="budgets.max_sram_bytes"]').get_attribute("class").split() == [
        "field",
        "has-error",
    ]
    assert page.url.endswith("#/jobs")
    # The only console error is the browser's note of the 422 itself.
    assert len(dashboard.console_errors) == 1 and "422" in dashboard.console_errors[0]

    page.fill("#f-budgets-max_sram_bytes", "64")
    page.click("#submit-job")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    job = service.get(f"/api/jobs/{job_id}")
    assert job["name"] == "from-the-form"
    assert job["spec"]["budgets"]["max_sram_bytes"] == 64 * 1024
    assert job["spec"]["strategy"] == "random" and job["spec"]["n_trials"] == 2
    assert job["status"] == "queued"  # no worker runs any more
    page.wait_for_selector('#empty-job[data-status="queued"]')
    assert len(dashboard.console_errors) == 1


def test_csv_download_has_every_trial(dashboard: Page, service: Service, tmp_path):
    page = dashboard.page
    job_id = service.jobs["big"]
    dashboard.goto(f"#/jobs/{job_id}")
    page.wait_for_selector("#download-csv")
    wait_for_points(page, BIG_TRIALS)
    with page.expect_download() as download:
        page.click("#download-csv")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    trials = {t["number"]: t for t in service.all_trials(job_id)}
    assert len(rows) == len(trials) == BIG_TRIALS
    assert [int(r["number"]) for r in rows] == sorted(trials)
    for row in rows:
        trial = trials[int(row["number"])]
        assert row["status"] == trial["status"]
        assert float(row["sram_bytes"]) == trial["costs"]["sram_bytes"]
        assert row["param_n_conv"] == str(trial["params"]["n_conv"])
    assert dashboard.console_errors == []


def test_a_job_with_over_a_thousand_trials_renders_and_stays_responsive(dashboard: Page, service: Service):
    page = dashboard.page
    job_id = service.jobs["big"]
    trials = service.all_trials(job_id)
    assert len(trials) == BIG_TRIALS
    start = time.monotonic()
    dashboard.goto(f"#/jobs/{job_id}")
    wait_for_points(page, BIG_TRIALS, timeout_ms=RENDER_BOUND_S * 1000)
    assert time.monotonic() - start < RENDER_BOUND_S
    legend = page.locator("#pareto-plot .legendtext").all_text_contents()
    counts = {s: sum(t["status"] == s for t in trials) for s in ("infeasible", "failed", "stopped")}
    assert f"infeasible (over budget) ({counts['infeasible']})" in legend
    assert f"failed ({counts['failed']})" in legend and f"stopped early ({counts['stopped']})" in legend

    start = time.monotonic()
    page.select_option("#x-metric", "latency_ms")
    page.wait_for_function("() => document.querySelector('#pareto-plot .xtitle').textContent === 'Latency (ms)'")
    wait_for_points(page, BIG_TRIALS)
    assert time.monotonic() - start < 10

    assert page.locator("#trial-table tbody tr").count() == 50
    assert page.locator(".pager").last.inner_text().startswith(f"1–50 of {BIG_TRIALS}")
    page.click('#trial-table th[data-sort="accuracy"]')
    best = max(t["measured"]["val_accuracy"] for t in trials if t["status"] in ("complete", "stopped"))
    first = page.locator("#trial-table tbody tr").first
    assert f"{best * 100:.1f} %" in first.inner_text()
    dashboard.screenshot("job-big")
    assert dashboard.console_errors == []


@pytest.mark.parametrize(
    ("role", "status", "notice"),
    [
        ("queued", "queued", "Waiting for a worker to claim the job"),
        ("failed", "failed", "This job failed"),
        ("cancelled", "cancelled", "Resume the job to queue it again"),
    ],
)
def test_empty_queued_failed_and_cancelled_jobs_show_a_clear_state(
    dashboard: Page, service: Service, role, status, notice
):
    page = dashboard.page
    job = service.get(f"/api/jobs/{service.jobs[role]}")
    assert job["status"] == status
    dashboard.goto(f"#/jobs/{job['id']}")
    empty = page.locator(f'#empty-job[data-status="{status}"]')
    empty.wait_for()
    assert empty.locator(".title").inner_text().strip()
    assert notice in page.locator("#job-state").inner_text()
    if status == "failed":
        assert job["error"] and job["error"] in page.locator("#job-state").inner_text()
    assert page.locator("#pareto-plot").count() == 0
    dashboard.screenshot(f"job-{role}")
    assert dashboard.console_errors == []


def test_a_running_job_updates_live_without_reloading(dashboard: Page, service: Service, tmp_path):
    page = dashboard.page
    status, job = service.request("POST", "/api/jobs", SMALL_SPEC | {"name": "followed-live", "n_trials": 3})
    assert status == 201, job
    trial_polls: list[str] = []
    page.on("request", lambda request: trial_polls.append(request.url) if "/trials?" in request.url else None)
    dashboard.goto(f"#/jobs/{job['id']}")
    page.wait_for_selector('#empty-job[data-status="queued"]')
    page.evaluate("() => { window.stillTheSamePage = true; }")
    # A worker takes the oldest queued job: the other queued jobs are held back meanwhile.
    held = [j["id"] for j in service.get("/api/jobs?status=queued&limit=500")["items"] if j["id"] != job["id"]]
    for job_id in held:
        assert service.request("POST", f"/api/jobs/{job_id}/cancel")[0] == 200
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115  closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "api.worker", "--once"], cwd=ROOT, env=service.env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        page.wait_for_selector("#job-head .badge.running", timeout=120_000)
        wait_for_points(page, 3, timeout_ms=180_000)
        page.wait_for_selector("#job-head .badge.succeeded", timeout=60_000)
        assert worker.wait(60) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        log.close()
        for job_id in held:
            assert service.request("POST", f"/api/jobs/{job_id}/resume")[0] == 200
    assert page.evaluate("() => window.stillTheSamePage") is True
    assert page.locator("#trial-table tbody tr").count() == 3
    # Every poll asks only for trials after its cursor (?after=N), which never moves back.
    afters = [int(parse_qs(urlparse(url).query)["after"][0]) for url in trial_polls]
    assert len(afters) > 1 and afters[0] == -1 and afters == sorted(afters)
    assert dashboard.console_errors == []


def test_an_unknown_job_says_so(dashboard: Page):
    dashboard.goto("#/jobs/0123456789abcdef")
    dashboard.page.get_by_text("No such job").wait_for()


def test_the_dashboard_asks_for_the_token_and_keeps_it(anonymous_dashboard: Page, service: Service):
    page = anonymous_dashboard.page
    anonymous_dashboard.goto("#/jobs")
    banner = page.locator("#global-banner")
    banner.wait_for()
    assert "needs an API token" in banner.inner_text()
    page.locator("#token-input").wait_for()
    page.fill("#token-input", TOKEN)
    page.click("#token-popover button[type=submit]")
    page.wait_for_selector(f'#jobs-table tr[data-job-id="{service.jobs["small"]}"]')
    assert page.evaluate("() => localStorage.getItem('sparse-nas.token')") == TOKEN
    assert page.locator("#token-label").inner_text() == "Token set"


# --- what the page is served with ---------------------------------------------------------


def test_page_and_plotly_are_served_without_a_token_and_the_layers_route_needs_one(service: Service):
    with urllib.request.urlopen(service.url + "/") as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert b'src="/static/js/main.js"' in response.read()
    with urllib.request.urlopen(service.url + "/vendor/plotly.min.js") as response:
        assert b"plotly.js v" in response.read(200)
    with urllib.request.urlopen(service.url + "/static/css/dashboard.css") as response:
        assert response.status == 200
    request = urllib.request.Request(service.url + f"/api/jobs/{service.jobs['small']}/trials/0/layers")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(request)
    assert denied.value.code == 401


def test_layers_add_up_to_the_trial_costs_and_compare_with_dense(service: Service):
    job_id = service.jobs["small"]
    for trial in service.all_trials(job_id):
        layers = service.get(f"/api/jobs/{job_id}/trials/{trial['number']}/layers")
        # The trial's costs come from the batched screen path, the layers from estimate().
        assert layers["flash_bytes"] == trial["costs"]["flash_bytes"]
        assert layers["sram_bytes"] == trial["costs"]["sram_bytes"]
        assert layers["latency_ms"] == pytest.approx(trial["costs"]["latency_ms"])
        for layer in layers["layers"]:
            kinds = {w["structure"]["kind"] for w in layer["weights"]}
            if kinds <= {"dense"}:
                assert layer["dense_model_bytes"] == layer["model_bytes"], json.dumps(layer)
            assert layer["compression_ratio"] == pytest.approx(layer["dense_model_bytes"] / layer["model_bytes"])
        # A pruned layer: its weights as dense int8 are one byte per parameter, which the
        # dense baseline must hold (weights only; biases and metadata come on top).
        for layer in layers["layers"]:
            for weight in layer["weights"]:
                if weight["structure"]["kind"] == "sparse" and weight["bits"] == 8:
                    assert layer["dense_model_bytes"] >= math.prod(weight["shape"])
    status, body = service.request("GET", f"/api/jobs/{job_id}/trials/{SMALL_TRIALS + 10}/layers")
    assert status == 404, body
