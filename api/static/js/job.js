// The job page: status, KPIs, Pareto scatter, hypervolume, parallel coordinates, trial table.
// Trials are polled incrementally (?after=), merged by number, and the plots are updated in place.

import { ApiError, api, loadPlotly, saveBlob } from "./api.js";
import {
  dateTime, duration, elapsedSeconds, emptyState, fill, h, kib, mj, ms, pct, progressBar, si, spinner, statusBadge,
} from "./format.js";
import { ACTIVE, jobActions, jobLabel } from "./jobs.js";
import { TrialPanel } from "./panel.js";
import { PLOT_CONFIG, hasWebGL, hypervolumeFigure, paretoFigure, parcoordsFigure } from "./plots.js";
import {
  COLOR_METRICS, METRICS, X_METRICS, Y_METRICS, accuracyOf, trialsCsv,
} from "./trials.js";

const ACTIVE_POLL_MS = 1500;
const IDLE_POLL_MS = 10000;
const PARETO_MIN_INTERVAL_MS = 3000;
const TRIALS_PAGE = 1000;
const TABLE_PAGE = 50;
const COUNTED = new Set(["complete", "infeasible", "stopped", "failed"]);

const COLUMNS = [
  { key: "number", label: "#", num: true, value: (t) => t.number },
  { key: "status", label: "Status", value: (t) => t.status },
  { key: "accuracy", label: "Accuracy", num: true, value: accuracyOf, fmt: (v) => pct(v) },
  { key: "test_accuracy", label: "Test acc.", num: true, value: METRICS.test_accuracy.value, fmt: (v) => pct(v) },
  { key: "flash_bytes", label: "Flash", num: true, value: METRICS.flash_bytes.value, fmt: (v) => kib(v) },
  { key: "sram_bytes", label: "SRAM", num: true, value: METRICS.sram_bytes.value, fmt: (v) => kib(v) },
  { key: "macs", label: "MACs", num: true, value: METRICS.macs.value, fmt: si },
  { key: "latency_ms", label: "Latency", num: true, value: METRICS.latency_ms.value, fmt: ms },
  { key: "energy_mj", label: "Energy", num: true, value: METRICS.energy_mj.value, fmt: mj },
  { key: "duration_s", label: "Time", num: true, value: (t) => t.duration_s, fmt: (v) => duration(v) },
  { key: "reason", label: "Note", value: (t) => t.reason || "" },
];

function select(id, label, options, value, onChange) {
  const el = h("select", { id, "aria-label": label }, options.map(([v, text]) => h("option", { value: v }, text)));
  el.value = value;
  el.addEventListener("change", () => onChange(el.value));
  return h("label", {}, label, el);
}

export class JobPage {
  constructor(root, jobId, { showError }) {
    this.root = root;
    this.jobId = jobId;
    this.showError = showError;
    this.trials = new Map();
    this.cursor = -1;
    this.pareto = null;
    this.paretoCounted = -1;
    this.paretoAt = 0;
    this.front = new Set();
    this.hoverCache = new Map();
    this.view = { x: "flash_bytes", y: "accuracy", color: "status" };
    this.hvX = "trials_done";
    this.parcoordsColour = "accuracy";
    this.table = { sort: "number", dir: 1, page: 0, filter: "all" };
    this.timer = null;
    this.destroyed = false;
    this.panel = null;
    this.wantedTrial = null;
    this.dataBuilt = false;
  }

  get apiBase() {
    return `/api/jobs/${encodeURIComponent(this.jobId)}`;
  }

  async mount(trialNumber) {
    this.wantedTrial = trialNumber;
    fill(this.root, spinner("Loading the job…"));
    let job;
    try {
      [job] = await Promise.all([api(this.apiBase), loadPlotly()]);
    } catch (err) {
      if (this.destroyed) return;
      const missing = err instanceof ApiError && err.status === 404;
      fill(this.root,
        h("a", { class: "crumb", href: "#/jobs" }, "← All jobs"),
        h("div", { class: "card" }, emptyState(missing ? "No such job" : "Cannot load the job", missing ? `There is no job with id ${this.jobId}. It may have been deleted.` : err.message, "error")),
      );
      return;
    }
    if (this.destroyed) return;
    this.job = job;
    this.buildSkeleton();
    this.renderHeader();
    await this.poll(true);
  }

  destroy() {
    this.destroyed = true;
    clearTimeout(this.timer);
    if (this.panel) this.panel.close();
    for (const el of this.root.querySelectorAll(".js-plotly-plot")) window.Plotly.purge(el);
  }

  // --- polling -------------------------------------------------------------------------------

  schedule() {
    clearTimeout(this.timer);
    if (this.destroyed) return;
    const delay = ACTIVE.has(this.job.status) ? ACTIVE_POLL_MS : IDLE_POLL_MS;
    this.timer = setTimeout(() => this.poll(false), delay);
  }

  async poll(first) {
    clearTimeout(this.timer);
    if (!first && document.hidden) {
      this.schedule();
      return;
    }
    try {
      const previousStatus = this.job.status;
      this.job = await api(this.apiBase);
      let changed = await this.fetchTrials();
      const counted = [...this.trials.values()].filter((t) => COUNTED.has(t.status)).length;
      const settled = !ACTIVE.has(this.job.status);
      const due = Date.now() - this.paretoAt > PARETO_MIN_INTERVAL_MS || settled;
      if (this.trials.size && ((counted !== this.paretoCounted && due) || (settled && previousStatus !== this.job.status))) {
        this.pareto = await api(`${this.apiBase}/pareto`);
        this.paretoCounted = counted;
        this.paretoAt = Date.now();
        this.front = new Set(this.pareto.pareto_front.map((t) => t.number));
        changed = true;
      }
      if (this.destroyed) return;
      this.lastUpdate = new Date();
      this.renderHeader();
      if (first || changed) this.renderData();
      if (first && this.wantedTrial !== null && this.wantedTrial !== undefined) this.showTrial(this.wantedTrial);
    } catch (err) {
      if (this.destroyed) return;
      this.liveLabel.textContent = `update failed: ${err.message}`;
    }
    this.schedule();
  }

  /** New and changed trials since the cursor; the cursor never passes an unfinished trial. */
  async fetchTrials() {
    let after = this.cursor;
    let cursor = this.cursor;
    let blocked = false;
    let changed = false;
    for (;;) {
      const page = await api(`${this.apiBase}/trials?after=${after}&limit=${TRIALS_PAGE}`);
      for (const trial of page.items) {
        const old = this.trials.get(trial.number);
        if (!old || old.status !== trial.status || old.duration_s !== trial.duration_s) {
          this.trials.set(trial.number, trial);
          changed = true;
        }
      }
      const last = page.items.length ? page.items[page.items.length - 1].number : null;
      if (!blocked) {
        cursor = page.next_after;
        if (last !== null && page.next_after < last) blocked = true;
      }
      if (!page.has_more || last === null) break;
      after = last;
    }
    this.cursor = cursor;
    return changed;
  }

  // --- layout ----------------------------------------------------------------------------------

  buildSkeleton() {
    this.headerEl = h("div", { class: "page-head", id: "job-head" });
    this.noticeEl = h("div", { id: "job-notice" });
    this.kpisEl = h("div", { class: "kpis", id: "kpis" });
    this.dataEl = h("div", { id: "job-data" });
    this.liveLabel = h("span", {});
    fill(this.root, this.headerEl, this.noticeEl, this.dataEl);
  }

  renderHeader() {
    const job = this.job;
    const spec = job.spec || {};
    const device = typeof spec.device === "string" ? spec.device : (spec.device && spec.device.name) || "custom device";
    const elapsed = elapsedSeconds(job);
    const active = ACTIVE.has(job.status);
    const live = h("span", { class: "live", id: "live" }, h("span", { class: `dot ${active ? "on" : ""}` }), this.liveLabel);
    this.liveLabel.textContent = active
      ? `live · updated ${this.lastUpdate ? this.lastUpdate.toLocaleTimeString() : "…"}`
      : `${job.status} · ${this.lastUpdate ? `checked ${this.lastUpdate.toLocaleTimeString()}` : ""}`;
    fill(this.headerEl,
      h("div", {},
        h("a", { class: "crumb", href: "#/jobs" }, "← All jobs"),
        h("div", { class: "job-title" }, h("h1", { id: "job-title" }, jobLabel(job)), statusBadge(job.status), live),
        h("div", { class: "meta" },
          h("span", {}, "id ", h("b", { class: "mono" }, job.id)),
          h("span", {}, h("b", {}, spec.dataset ? spec.dataset.name : "?"), " · ", h("b", {}, spec.search_space ? spec.search_space.name : "?")),
          h("span", {}, "on ", h("b", {}, device), ` (${spec.runtime || "tflm"})`),
          h("span", {}, "strategy ", h("b", {}, spec.strategy || "?")),
          h("span", {}, "objectives ", h("b", {}, (spec.objectives || []).join(", "))),
          h("span", {}, "created ", h("b", {}, dateTime(job.created_at))),
          h("span", {}, "elapsed ", h("b", { id: "job-elapsed" }, elapsed === null ? "not started" : duration(elapsed)))),
        h("div", { class: "job-progress" }, progressBar(job.progress.trials_done, job.progress.n_trials, job.status))),
      jobActions(job, (updated) => { this.job = updated; this.renderHeader(); this.poll(false); }, (err) => this.showError(err.message)),
    );
    this.renderNotice();
  }

  renderNotice() {
    const job = this.job;
    const notices = {
      failed: ["error", "This job failed", job.error || "No error message was recorded.", true],
      cancelled: ["warn", "Cancelled", "The trials run so far are kept. Resume the job to queue it again; it continues where it stopped."],
      cancelling: ["warn", "Cancelling", "The trials in flight finish first; no new trial starts."],
      queued: ["info", "Queued", "Waiting for a worker to claim the job. This page updates by itself."],
    };
    const notice = notices[job.status];
    if (!notice) {
      fill(this.noticeEl);
      return;
    }
    const [kind, title, text, pre] = notice;
    fill(this.noticeEl, h("div", { class: `notice ${kind}`, id: "job-state", "data-status": job.status },
      h("div", {}, h("div", { class: "title" }, title), pre ? h("pre", {}, text) : h("div", {}, text))));
  }

  renderEmpty() {
    const job = this.job;
    const states = {
      queued: ["Waiting for a worker", "This job is queued: no trial has run yet. Trials appear here, live, as soon as a worker starts it.", "clock"],
      running: ["Starting", "The first trial is being costed and trained; it appears here as soon as it is recorded.", "run"],
      cancelling: ["No trials", "The job is being cancelled before any trial was recorded.", "stop"],
      cancelled: ["No trials", "The job was cancelled before any trial ran. Resume it to start the search.", "stop"],
      failed: ["No trials", "The job failed before any trial was recorded; the error is shown above.", "error"],
      succeeded: ["No trials", "The job finished without recording a trial.", "inbox"],
    };
    const [title, text, icon] = states[job.status] || states.succeeded;
    const card = h("div", { class: "card", id: "empty-job", "data-status": job.status }, emptyState(title, text, icon));
    this.dataBuilt = false;
    fill(this.dataEl, card);
  }

  buildData() {
    const Plotly = window.Plotly;
    this.paretoEl = h("div", { class: "plot", id: "pareto-plot" });
    this.hvEl = h("div", { class: "plot-sm", id: "hv-plot" });
    this.parcoordsEl = h("div", { class: "plot-sm", id: "parcoords-plot" });
    this.tableEl = h("div", { class: "card-body flush", id: "trials-table" });
    this.tableCount = h("span", { class: "muted small" });
    const metricOptions = (keys) => keys.map((k) => [k, METRICS[k].label]);
    const paretoTools = h("div", { class: "toolbar" },
      select("x-metric", "X", metricOptions(X_METRICS), this.view.x, (v) => { this.view.x = v; this.renderPareto(); }),
      select("y-metric", "Y", metricOptions(Y_METRICS), this.view.y, (v) => { this.view.y = v; this.renderPareto(); }),
      select("color-metric", "Colour", [["status", "Status"], ...metricOptions(COLOR_METRICS)], this.view.color, (v) => { this.view.color = v; this.renderPareto(); }));
    const hvTools = h("div", { class: "toolbar" },
      select("hv-x", "X", [["trials_done", "Trials"], ["cpu_seconds", "CPU time"]], this.hvX, (v) => { this.hvX = v; this.renderHypervolume(); }));
    const pcTools = h("div", { class: "toolbar" },
      select("pc-colour", "Lines", [["accuracy", "Trained trials, by accuracy"], ["status", "All trials, by status"]], this.parcoordsColour, (v) => { this.parcoordsColour = v; this.renderParcoords(); }));
    const statusFilter = select("trial-filter", "Show", [["all", "All trials"], ["front", "Pareto front"], ["complete", "complete"], ["stopped", "stopped early"], ["infeasible", "infeasible"], ["failed", "failed"], ["running", "running"]],
      this.table.filter, (v) => { this.table.filter = v; this.table.page = 0; this.renderTable(); });
    const csv = h("button", { type: "button", class: "btn btn-sm", id: "download-csv" }, "Download CSV");
    csv.addEventListener("click", () => this.downloadCsv());
    fill(this.dataEl,
      this.kpisEl,
      h("div", { class: "card" },
        h("div", { class: "card-head" }, h("div", {}, h("h2", {}, "Pareto front"), h("div", { class: "muted small" }, "Click a point for its trial. Dashed red lines are the budgets.")), paretoTools),
        h("div", { class: "card-body" }, this.paretoEl)),
      h("div", { class: "card" },
        h("div", { class: "card-head" }, h("div", {}, h("h2", {}, "Parameters"), h("div", { class: "muted small" }, "Every searched parameter that varies; drag along an axis to filter.")), pcTools),
        h("div", { class: "card-body plot-scroll" }, this.parcoordsEl)),
      h("div", { class: "card" },
        h("div", { class: "card-head" }, h("div", {}, h("h2", {}, "Hypervolume over trials"), h("div", { class: "muted small" }, "Of the Pareto front, normalised to the budgets: 1 would be 100 % accuracy at no cost.")), hvTools),
        h("div", { class: "card-body" }, this.hvEl)),
      h("div", { class: "card" },
        h("div", { class: "card-head" }, h("div", { class: "toolbar" }, h("h2", {}, "Trials"), this.tableCount), h("div", { class: "toolbar" }, statusFilter, csv)),
        this.tableEl),
    );
    Plotly.newPlot(this.paretoEl, [], {}, PLOT_CONFIG);
    this.paretoEl.on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (point && typeof point.customdata === "number") this.openTrial(point.customdata);
    });
    this.dataBuilt = true;
  }

  renderData() {
    if (!this.trials.size) {
      this.renderEmpty();
      return;
    }
    if (!this.dataBuilt) this.buildData();
    this.renderKpis();
    this.renderPareto();
    this.renderHypervolume();
    this.renderParcoords();
    this.renderTable();
    if (this.panel) {
      const trial = this.trials.get(this.panel.number);
      if (trial) this.panel.update(trial, this.front.has(trial.number));
    }
  }

  renderKpis() {
    const trials = [...this.trials.values()];
    const counts = {};
    for (const t of trials) counts[t.status] = (counts[t.status] || 0) + 1;
    const counted = trials.filter((t) => COUNTED.has(t.status)).length;
    const cpu = trials.reduce((s, t) => s + (t.duration_s || 0), 0);
    const best = this.pareto && this.pareto.best_per_budget && this.pareto.best_per_budget.best;
    const bestCard = h("div", { class: "kpi", id: "kpi-best" },
      h("div", { class: "label" }, "Best within budget"),
      h("div", { class: "value" }, best ? pct(best.accuracy) : "–"),
      h("div", { class: "sub" }, best
        ? h("a", { href: `#/jobs/${encodeURIComponent(this.jobId)}/trials/${best.number}` }, `trial ${best.number} · ${kib(best.costs.flash_bytes)} flash · ${kib(best.costs.sram_bytes)} SRAM`)
        : "no complete trial within the budgets yet"));
    const hv = this.pareto ? this.pareto.hypervolume : null;
    fill(this.kpisEl,
      bestCard,
      h("div", { class: "kpi", id: "kpi-hv" }, h("div", { class: "label" }, "Hypervolume"),
        h("div", { class: "value" }, hv === null ? "–" : hv.toFixed(4)),
        h("div", { class: "sub" }, `${this.front.size} trial${this.front.size === 1 ? "" : "s"} on the Pareto front`)),
      h("div", { class: "kpi", id: "kpi-trials" }, h("div", { class: "label" }, "Trials"),
        h("div", { class: "value" }, `${counted} / ${this.job.progress.n_trials}`),
        h("div", { class: "counts" }, Object.entries(counts).sort().map(([s, n]) => statusBadge(s, `${n} ${s}`)))),
      h("div", { class: "kpi", id: "kpi-time" }, h("div", { class: "label" }, "Trial time"),
        h("div", { class: "value" }, duration(cpu)),
        h("div", { class: "sub" }, counted ? `${duration(cpu / Math.max(counted, 1))} per trial on average` : "")),
    );
  }

  renderPareto() {
    if (!this.dataBuilt) return;
    const limits = this.pareto ? this.pareto.limits : {};
    const { data, layout } = paretoFigure([...this.trials.values()], this.front, limits, this.view, this.hoverCache);
    window.Plotly.react(this.paretoEl, data, layout, PLOT_CONFIG);
  }

  renderHypervolume() {
    const history = this.pareto ? this.pareto.hypervolume_history : [];
    if (!history.length) {
      window.Plotly.purge(this.hvEl);
      fill(this.hvEl, emptyState("No hypervolume yet", "It grows as complete trials within the budgets are found."));
      this.hvPlotted = false;
      return;
    }
    if (!this.hvPlotted) fill(this.hvEl);
    const { data, layout } = hypervolumeFigure(history, this.hvX);
    window.Plotly.react(this.hvEl, data, layout, PLOT_CONFIG);
    this.hvPlotted = true;
  }

  renderParcoords() {
    if (!hasWebGL()) {
      fill(this.parcoordsEl, emptyState("Parallel coordinates need WebGL", "This browser has WebGL turned off; the trial table below has every parameter."));
      return;
    }
    const figure = parcoordsFigure([...this.trials.values()], this.front, this.parcoordsColour);
    if (!figure) {
      window.Plotly.purge(this.parcoordsEl);
      fill(this.parcoordsEl, emptyState("Nothing to draw yet", this.parcoordsColour === "accuracy" ? "No trial has been trained yet." : "No trial has parameters yet."));
      this.pcPlotted = false;
      return;
    }
    if (!this.pcPlotted) fill(this.parcoordsEl);
    this.parcoordsEl.style.width = `${Math.max(figure.width, this.parcoordsEl.parentElement.clientWidth - 32)}px`;
    window.Plotly.react(this.parcoordsEl, figure.data, figure.layout, { ...PLOT_CONFIG, responsive: false });
    this.pcPlotted = true;
  }

  // --- the table -------------------------------------------------------------------------------

  filteredTrials() {
    const filter = this.table.filter;
    const all = [...this.trials.values()];
    if (filter === "all") return all;
    if (filter === "front") return all.filter((t) => this.front.has(t.number));
    if (filter === "running") return all.filter((t) => t.status === "running" || t.status === "waiting");
    return all.filter((t) => t.status === filter);
  }

  renderTable() {
    const column = COLUMNS.find((c) => c.key === this.table.sort) || COLUMNS[0];
    const dir = this.table.dir;
    const rows = this.filteredTrials().map((t) => [column.value(t), t]);
    rows.sort((a, b) => {
      const [va, vb] = [a[0], b[0]];
      const missingA = va === null || va === undefined || va === "";
      const missingB = vb === null || vb === undefined || vb === "";
      if (missingA || missingB) return missingA === missingB ? a[1].number - b[1].number : (missingA ? 1 : -1);
      if (va < vb) return -dir;
      if (va > vb) return dir;
      return a[1].number - b[1].number;
    });
    const pages = Math.max(1, Math.ceil(rows.length / TABLE_PAGE));
    this.table.page = Math.min(this.table.page, pages - 1);
    const start = this.table.page * TABLE_PAGE;
    const shown = rows.slice(start, start + TABLE_PAGE).map(([, t]) => t);
    this.tableCount.textContent = `${rows.length} of ${this.trials.size}`;
    const head = h("tr", {}, COLUMNS.map((c) => {
      const th = h("th", {
        class: `sortable ${c.num ? "num" : ""}`, "data-sort": c.key, tabindex: 0,
        "aria-sort": c.key === this.table.sort ? (dir > 0 ? "ascending" : "descending") : "none",
      }, c.label);
      const sort = () => {
        if (this.table.sort === c.key) this.table.dir = -this.table.dir;
        else { this.table.sort = c.key; this.table.dir = c.num && c.key !== "number" ? -1 : 1; }
        this.renderTable();
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
      return th;
    }));
    const selected = this.panel ? this.panel.number : null;
    const body = shown.map((t) => {
      const cells = COLUMNS.map((c) => {
        if (c.key === "status") {
          return h("td", {}, statusBadge(t.status), this.front.has(t.number) ? [" ", h("span", { class: "badge front", title: "On the Pareto front" }, "★ front")] : null);
        }
        if (c.key === "reason") return h("td", { class: "muted small", title: t.reason || "" }, (t.reason || "").slice(0, 60));
        const v = c.value(t);
        return h("td", { class: c.num ? "num" : "" }, c.fmt ? c.fmt(v) : (v ?? "–"));
      });
      const tr = h("tr", { class: `clickable ${selected === t.number ? "selected" : ""}`, "data-trial": t.number }, cells);
      tr.addEventListener("click", () => this.openTrial(t.number));
      return tr;
    });
    const table = h("table", { class: "data", id: "trial-table" }, h("thead", {}, head), h("tbody", {}, body));
    const pager = h("div", { class: "pager" },
      h("span", {}, rows.length ? `${start + 1}–${start + shown.length} of ${rows.length}` : "No trial matches"),
      h("div", { class: "toolbar" },
        this.pageButton("‹ Previous", this.table.page > 0, -1),
        h("span", {}, `page ${this.table.page + 1} of ${pages}`),
        this.pageButton("Next ›", this.table.page < pages - 1, 1)));
    fill(this.tableEl, h("div", { class: "table-wrap" }, table), pager);
  }

  pageButton(label, enabled, step) {
    const b = h("button", { type: "button", class: "btn btn-sm", disabled: !enabled }, label);
    b.addEventListener("click", () => { this.table.page += step; this.renderTable(); });
    return b;
  }

  downloadCsv() {
    const csv = trialsCsv([...this.trials.values()], this.front);
    const name = (this.job.name || this.job.id).replace(/[^A-Za-z0-9_.-]+/g, "-");
    saveBlob(new Blob([csv], { type: "text/csv" }), `sparse-nas-${name}-trials.csv`);
  }

  // --- the trial panel -------------------------------------------------------------------------

  openTrial(number) {
    location.hash = `#/jobs/${encodeURIComponent(this.jobId)}/trials/${number}`;
  }

  /** Called by the router: open the panel of trial `number` (null: close it). */
  showTrial(number) {
    if (number === null || number === undefined) {
      if (this.panel) this.panel.close();
      this.panel = null;
      if (this.dataBuilt) this.renderTable();
      return;
    }
    const trial = this.trials.get(number);
    if (!trial) {
      this.wantedTrial = number;
      return;
    }
    if (this.panel) this.panel.close();
    this.panel = new TrialPanel({
      job: this.job,
      trial,
      onFront: this.front.has(number),
      limits: this.pareto ? this.pareto.limits : {},
      apiBase: this.apiBase,
      onClose: () => { location.hash = `#/jobs/${encodeURIComponent(this.jobId)}`; },
    });
    this.panel.open();
    if (this.dataBuilt) this.renderTable();
  }
}
