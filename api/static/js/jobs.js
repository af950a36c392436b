// The jobs page: every job with its progress, and the form that submits a new one.

import { api, ApiError } from "./api.js";
import {
  KIB, dateTime, duration, elapsedSeconds, emptyState, fill, h, pct, progressBar, randomKey, spinner, statusBadge,
} from "./format.js";

const POLL_MS = 2000;
const PAGE_SIZE = 50;
const JOB_STATUSES = ["queued", "running", "cancelling", "cancelled", "succeeded", "failed"];
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const FALLBACK_ENUMS = {
  strategy: ["mobo", "gp", "nsga2", "tpe", "random", "dnas"],
  objectives: ["accuracy", "flash_bytes", "sram_bytes", "macs", "latency_ms"],
  backend: ["inprocess", "ray"],
};
const RUNTIMES = ["tflm", "ideal"];
const OBJECTIVE_LABELS = { flash_bytes: "Flash", sram_bytes: "SRAM", macs: "MACs", latency_ms: "Latency" };

/** Cancel and resume buttons for a job; `onDone(job)` after the API answered. */
export function jobActions(job, onDone, onError) {
  const act = async (action, button) => {
    button.disabled = true;
    try {
      onDone(await api(`/api/jobs/${encodeURIComponent(job.id)}/${action}`, { method: "POST" }));
    } catch (err) {
      button.disabled = false;
      onError(err);
    }
  };
  const buttons = [];
  if (["queued", "running"].includes(job.status)) {
    const b = h("button", { type: "button", class: "btn btn-sm btn-danger", "data-action": "cancel", title: "Cancel this job" }, "Cancel");
    b.addEventListener("click", (e) => { e.stopPropagation(); act("cancel", b); });
    buttons.push(b);
  }
  if (["cancelled", "failed"].includes(job.status)) {
    const b = h("button", { type: "button", class: "btn btn-sm", "data-action": "resume", title: "Queue this job again; it keeps its trials" }, "Resume");
    b.addEventListener("click", (e) => { e.stopPropagation(); act("resume", b); });
    buttons.push(b);
  }
  return h("div", { class: "toolbar" }, buttons);
}

export function jobLabel(job) {
  return job.name || `job ${job.id.slice(0, 8)}`;
}

export class JobsPage {
  constructor(root, { showError }) {
    this.root = root;
    this.showError = showError;
    this.status = "";
    this.limit = PAGE_SIZE;
    this.timer = null;
    this.destroyed = false;
    this.lastSignature = null;
  }

  async mount() {
    this.listBody = h("div", { class: "card-body flush" }, spinner("Loading jobs…"));
    this.countLabel = h("span", { class: "muted small" });
    const filter = h("select", { id: "status-filter", "aria-label": "Filter by status" },
      h("option", { value: "" }, "All statuses"), JOB_STATUSES.map((s) => h("option", { value: s }, s)));
    filter.addEventListener("change", () => { this.status = filter.value; this.limit = PAGE_SIZE; this.refresh(); });
    this.formCard = h("div", { class: "card", id: "new-job" }, h("div", { class: "card-head" }, h("h2", {}, "New search job")), h("div", { class: "card-body" }, spinner("Loading the catalogue…")));
    fill(this.root,
      h("div", { class: "page-head" },
        h("div", {}, h("h1", {}, "Search jobs"), h("div", { class: "muted sub" }, "Hardware-aware architecture searches and their progress. The list updates by itself."))),
      h("div", { class: "grid-jobs" },
        h("div", { class: "card", id: "jobs-card" },
          h("div", { class: "card-head" }, h("h2", {}, "Jobs"), h("div", { class: "toolbar" }, this.countLabel, filter)),
          this.listBody),
        this.formCard),
    );
    this.refresh();
    this.mountForm();
  }

  destroy() {
    this.destroyed = true;
    clearTimeout(this.timer);
  }

  schedule() {
    clearTimeout(this.timer);
    if (!this.destroyed) this.timer = setTimeout(() => this.refresh(), POLL_MS);
  }

  async refresh() {
    clearTimeout(this.timer);
    try {
      const query = new URLSearchParams({ limit: String(this.limit), offset: "0" });
      if (this.status) query.set("status", this.status);
      const page = await api(`/api/jobs?${query}`);
      if (this.destroyed) return;
      this.renderList(page);
    } catch (err) {
      if (this.destroyed) return;
      this.lastSignature = null;
      fill(this.listBody, emptyState("Cannot list jobs", err.message, "error"));
    }
    this.schedule();
  }

  renderList(page) {
    const { items, total } = page;
    // Unchanged and nothing running (whose elapsed time ticks): keep the DOM, and a button
    // the pointer is on.
    const signature = JSON.stringify(page);
    if (signature === this.lastSignature && !items.some((job) => ACTIVE.has(job.status))) return;
    this.lastSignature = signature;
    this.countLabel.textContent = `${total} job${total === 1 ? "" : "s"}`;
    if (!items.length) {
      const text = this.status ? `No job is ${this.status}.` : "Submit a search with the form to get started.";
      fill(this.listBody, emptyState("No jobs yet", text));
      return;
    }
    const now = Date.now();
    const rows = items.map((job) => {
      const href = `#/jobs/${encodeURIComponent(job.id)}`;
      const spec = job.spec || {};
      const device = typeof spec.device === "string" ? spec.device : (spec.device && spec.device.name) || "custom";
      const elapsed = elapsedSeconds(job, now);
      const row = h("tr", { class: "clickable", "data-job-id": job.id },
        h("td", {}, h("a", { href, class: "job-name" }, jobLabel(job)), h("div", { class: "job-id" }, job.id.slice(0, 12))),
        h("td", {}, statusBadge(job.status)),
        h("td", {}, progressBar(job.progress.trials_done, job.progress.n_trials, job.status)),
        h("td", { class: "num" }, elapsed === null ? (job.status === "queued" ? "waiting" : "–") : duration(elapsed)),
        h("td", { class: "num", title: "Best validation accuracy of a complete trial within the budgets" }, pct(job.best_accuracy)),
        h("td", {}, h("div", {}, `${spec.dataset ? spec.dataset.name : "?"} · ${spec.search_space ? spec.search_space.name : "?"}`), h("div", { class: "muted small" }, `${device} · ${spec.strategy || ""}`)),
        h("td", { class: "muted" }, dateTime(job.created_at)),
        h("td", {}, jobActions(job, () => this.refresh(), (err) => this.showError(err.message))),
      );
      row.addEventListener("click", (e) => {
        if (!e.target.closest("a, button")) location.hash = href;
      });
      return row;
    });
    const table = h("table", { class: "data", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "Elapsed", "Best accuracy", "Search", "Created", ""].map((t, i) => h("th", { class: [3, 4].includes(i) ? "num" : "" }, t)))),
      h("tbody", {}, rows));
    const children = [h("div", { class: "table-wrap" }, table)];
    if (total > items.length) {
      const more = h("button", { type: "button", class: "btn btn-sm" }, `Show more (${total - items.length} older)`);
      more.addEventListener("click", () => { this.limit = Math.min(this.limit + PAGE_SIZE, 500); this.refresh(); });
      children.push(h("div", { class: "pager" }, h("span", {}, `${items.length} of ${total}`), more));
    }
    fill(this.listBody, ...children);
  }

  // --- the submission form ----------------------------------------------------------------

  async mountForm() {
    let datasets, spaces, devices, enums;
    try {
      [datasets, spaces, devices, enums] = await Promise.all([
        api("/api/datasets"), api("/api/search-spaces"), api("/api/devices"), loadEnums(),
      ]);
    } catch (err) {
      if (this.destroyed) return;
      fill(this.formCard.lastChild, emptyState("Cannot load the catalogue", err.message, "error"));
      return;
    }
    if (this.destroyed) return;
    this.form = new JobForm({ datasets, spaces, devices, enums }, (job) => {
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    });
    fill(this.formCard.lastChild, this.form.element);
  }
}

async function loadEnums() {
  // The job spec's own schema lists the strategies, objectives and backends; fall back to
  // the known ones if the schema is unavailable.
  try {
    const response = await fetch("/openapi.json");
    const schema = await response.json();
    const components = schema.components.schemas;
    const job = components.SearchJobSpec;
    const defs = job.$defs || components;
    const execution = defs.ExecutionSpec || components.ExecutionSpec;
    return {
      strategy: job.properties.strategy.enum || FALLBACK_ENUMS.strategy,
      objectives: job.properties.objectives.items.enum || FALLBACK_ENUMS.objectives,
      backend: (execution && execution.properties.backend.enum) || FALLBACK_ENUMS.backend,
    };
  } catch {
    return FALLBACK_ENUMS;
  }
}

/** A form field: label, control, help, and a slot for the API's message; `data-field` is its loc. */
function field(loc, label, control, help) {
  const id = `f-${loc.replace(/\./g, "-")}`;
  if (control instanceof HTMLElement && !control.id && ["INPUT", "SELECT"].includes(control.tagName)) control.id = id;
  return h("div", { class: "field", "data-field": loc },
    h("label", { for: control.id || id }, label),
    control,
    help ? h("div", { class: "help" }, help) : null,
    h("div", { class: "field-error", role: "alert", hidden: true }));
}

const input = (attrs) => h("input", { type: "text", autocomplete: "off", ...attrs });

class JobForm {
  constructor({ datasets, spaces, devices, enums }, onCreated) {
    this.datasets = datasets;
    this.spaces = spaces;
    this.devices = devices;
    this.enums = enums;
    this.onCreated = onCreated;
    this.idempotencyKey = randomKey();
    this.element = this.build();
    this.syncDataset();
    this.syncDevice();
    this.updatePreview();
  }

  build() {
    const c = (this.controls = {});
    c.name = input({ name: "name", placeholder: "e.g. kws-f446" });
    c.dataset = h("select", { name: "dataset" }, this.datasets.map((d) =>
      h("option", { value: d.name }, `${d.name} (${d.input_shape.join("×")}, ${d.num_classes} classes${d.needs_data_dir ? ", data files" : ""})`)));
    c.dataset.value = this.datasets.some((d) => d.name === "digits") ? "digits" : this.datasets[0]?.name;
    c.space = h("select", { name: "search_space" });
    c.device = h("select", { name: "device" }, this.devices.map((d) =>
      h("option", { value: d.name }, `${d.display_name} · ${Math.round(d.flash_bytes / KIB)} KiB flash · ${Math.round(d.sram_bytes / KIB)} KiB SRAM`)));
    c.device.value = this.devices.some((d) => d.name === "stm32f446re") ? "stm32f446re" : this.devices[0]?.name;
    this.deviceCard = h("div", { class: "device-card", id: "device-card" });
    c.runtime = h("select", { name: "runtime" }, RUNTIMES.map((r) => h("option", { value: r }, r)));
    c.maxFlash = input({ name: "max_flash_kib", inputmode: "decimal", value: "128" });
    c.maxSram = input({ name: "max_sram_kib", inputmode: "decimal", value: "32" });
    c.maxLatency = input({ name: "max_latency_ms", inputmode: "decimal", placeholder: "none" });
    c.objectives = this.enums.objectives.filter((o) => o !== "accuracy").map((o) =>
      h("input", { type: "checkbox", name: "objective", value: o, checked: ["flash_bytes", "sram_bytes"].includes(o) }));
    c.strategy = h("select", { name: "strategy" }, this.enums.strategy.map((s) => h("option", { value: s }, s)));
    c.strategy.value = this.enums.strategy.includes("mobo") ? "mobo" : this.enums.strategy[0];
    c.nTrials = input({ name: "n_trials", inputmode: "numeric", value: "20" });
    c.epochs = input({ name: "epochs", inputmode: "numeric", value: "5" });
    c.batchSize = input({ name: "batch_size", inputmode: "numeric", value: "128" });
    c.seed = input({ name: "seed", inputmode: "numeric", value: "0" });
    c.backend = h("select", { name: "backend" }, this.enums.backend.map((b) => h("option", { value: b }, b)));
    c.concurrency = input({ name: "concurrency", inputmode: "numeric", value: "1" });

    this.summary = h("div", { class: "notice error", id: "form-errors", role: "alert", hidden: true });
    this.preview = h("pre", { id: "spec-preview" });
    this.submit = h("button", { type: "submit", class: "btn btn-primary", id: "submit-job" }, "Submit job");
    const objectives = h("div", { class: "checks", id: "f-objectives" },
      h("label", {}, h("input", { type: "checkbox", checked: true, disabled: true }), "Accuracy"),
      c.objectives.map((box) => h("label", {}, box, OBJECTIVE_LABELS[box.value] || box.value)));

    const form = h("form", { class: "form", id: "job-form", novalidate: true },
      this.summary,
      h("fieldset", {}, h("legend", {}, "What to search"),
        field("name", "Name", c.name),
        field("dataset.name", "Dataset", c.dataset),
        field("search_space.name", "Search space", c.space, h("span", { id: "space-help" }))),
      h("fieldset", {}, h("legend", {}, "Target"),
        field("device", "Device", c.device, this.deviceCard),
        field("runtime", "Runtime", c.runtime, "tflm: TensorFlow Lite Micro's arena and overheads; ideal: the papers' accounting")),
      h("fieldset", {}, h("legend", {}, "Budgets"),
        h("div", { class: "cols-3" },
          field("budgets.max_flash_bytes", "Flash (KiB)", c.maxFlash),
          field("budgets.max_sram_bytes", "SRAM (KiB)", c.maxSram),
          field("budgets.max_latency_ms", "Latency (ms)", c.maxLatency)),
        h("div", { class: "help muted small" }, "Empty: no budget beyond the device's own memory. KiB are sent to the API in bytes.")),
      h("fieldset", {}, h("legend", {}, "Search"),
        h("div", { class: "field", "data-field": "objectives" }, h("span", { class: "label" }, "Objectives"), objectives,
          h("div", { class: "field-error", role: "alert", hidden: true })),
        h("div", { class: "cols-2" },
          field("strategy", "Strategy", c.strategy),
          field("n_trials", "Trial budget", c.nTrials)),
        h("div", { class: "cols-3" },
          field("training.epochs", "Epochs", c.epochs),
          field("training.batch_size", "Batch size", c.batchSize),
          field("seed", "Seed", c.seed)),
        h("div", { class: "cols-2" },
          field("execution.backend", "Trials run", c.backend),
          field("execution.concurrency", "Concurrency", c.concurrency))),
      h("details", { class: "spec-preview" }, h("summary", {}, "Job spec (JSON sent to POST /api/jobs)"), this.preview),
      h("div", { class: "row-end" }, this.submit),
    );
    form.addEventListener("input", () => this.updatePreview());
    form.addEventListener("change", (e) => {
      if (e.target === c.dataset) this.syncDataset();
      if (e.target === c.device) this.syncDevice();
      this.updatePreview();
    });
    form.addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    return form;
  }

  syncDataset() {
    const c = this.controls;
    const dataset = c.dataset.value;
    const fits = this.spaces.filter((s) => (s.fits_datasets || []).includes(dataset));
    const offered = fits.length ? fits : this.spaces;
    const previous = c.space.value;
    fill(c.space, ...offered.map((s) => h("option", { value: s.name }, s.name)));
    c.space.value = offered.some((s) => s.name === previous) ? previous : (offered.find((s) => s.name === "sparse_cnn") || offered[0])?.name;
    const space = this.spaces.find((s) => s.name === c.space.value);
    const help = this.element.querySelector("#space-help");
    if (help) help.textContent = space ? space.description : "";
    c.space.onchange = () => {
      const chosen = this.spaces.find((s) => s.name === c.space.value);
      if (help) help.textContent = chosen ? chosen.description : "";
    };
  }

  syncDevice() {
    const device = this.devices.find((d) => d.name === this.controls.device.value);
    if (!device) return;
    const row = (k, v) => [h("span", { class: "k" }, k), h("span", {}, v)];
    fill(this.deviceCard,
      ...row("Core", `${device.core}${device.fpu ? " · FPU" : ""}${device.dsp ? " · DSP" : ""} · ${Math.round(device.clock_hz / 1e6)} MHz`),
      ...row("Flash", `${(device.flash_bytes / KIB).toFixed(0)} KiB`),
      ...row("SRAM", `${(device.sram_bytes / KIB).toFixed(0)} KiB`),
    );
    this.controls.maxFlash.placeholder = `device: ${(device.flash_bytes / KIB).toFixed(0)}`;
    this.controls.maxSram.placeholder = `device: ${(device.sram_bytes / KIB).toFixed(0)}`;
  }

  /** The job spec as the form describes it. Numbers that do not parse are sent as typed,
   * so the API's validation names the field. */
  spec() {
    const c = this.controls;
    const number = (el) => {
      const text = el.value.trim();
      if (text === "") return undefined;
      const value = Number(text);
      return Number.isFinite(value) ? value : text;
    };
    const kibToBytes = (el) => {
      const value = number(el);
      return typeof value === "number" ? Math.round(value * KIB) : value;
    };
    const budgets = {};
    const flash = kibToBytes(c.maxFlash);
    const sram = kibToBytes(c.maxSram);
    const latency = number(c.maxLatency);
    if (flash !== undefined) budgets.max_flash_bytes = flash;
    if (sram !== undefined) budgets.max_sram_bytes = sram;
    if (latency !== undefined) budgets.max_latency_ms = latency;
    const spec = {
      dataset: { name: c.dataset.value },
      search_space: { name: c.space.value },
      device: c.device.value,
      runtime: c.runtime.value,
      budgets,
      objectives: ["accuracy", ...c.objectives.filter((b) => b.checked).map((b) => b.value)],
      strategy: c.strategy.value,
      training: {},
      execution: { backend: c.backend.value },
    };
    if (c.name.value.trim()) spec.name = c.name.value.trim();
    const set = (target, key, el) => { const v = number(el); if (v !== undefined) target[key] = v; };
    set(spec, "n_trials", c.nTrials);
    set(spec, "seed", c.seed);
    set(spec.training, "epochs", c.epochs);
    set(spec.training, "batch_size", c.batchSize);
    set(spec.execution, "concurrency", c.concurrency);
    return spec;
  }

  updatePreview() {
    this.preview.textContent = JSON.stringify(this.spec(), null, 2);
  }

  clearErrors() {
    this.summary.hidden = true;
    fill(this.summary);
    for (const el of this.element.querySelectorAll(".field.has-error")) {
      el.classList.remove("has-error");
      const slot = el.querySelector(".field-error");
      slot.hidden = true;
      slot.textContent = "";
    }
  }

  /** Put each of the API's errors beside the field its `loc` names (the longest match). */
  showErrors(err) {
    const unplaced = [];
    const pathOf = (error) => (error.loc || []).filter((part, i) => !(i === 0 && part === "body")).map(String);
    for (const error of err.errors) {
      const path = pathOf(error);
      let target = null;
      for (let n = path.length; n > 0 && !target; n -= 1) {
        target = this.element.querySelector(`.field[data-field="${CSS.escape(path.slice(0, n).join("."))}"]`);
      }
      if (!target) {
        unplaced.push(error);
        continue;
      }
      target.classList.add("has-error");
      const slot = target.querySelector(".field-error");
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent} ${error.msg}` : error.msg;
    }
    const lines = unplaced.map((e) => h("li", {}, pathOf(e).length ? `${pathOf(e).join(".")}: ${e.msg}` : e.msg));
    fill(this.summary, h("div", {},
      h("div", { class: "title" }, err.errors.length ? "The job was not submitted: fix the highlighted fields." : `The job was not submitted: ${err.message}`),
      lines.length ? h("ul", {}, lines) : null));
    this.summary.hidden = false;
    const first = this.element.querySelector(".field.has-error input, .field.has-error select");
    if (first) first.focus();
  }

  async send() {
    this.clearErrors();
    this.submit.disabled = true;
    this.submit.textContent = "Submitting…";
    try {
      const job = await api("/api/jobs", {
        method: "POST", body: this.spec(), headers: { "Idempotency-Key": this.idempotencyKey },
      });
      this.idempotencyKey = randomKey();
      this.onCreated(job);
    } catch (err) {
      if (err instanceof ApiError) this.showErrors(err);
      else throw err;
    } finally {
      this.submit.disabled = false;
      this.submit.textContent = "Submit job";
    }
  }
}

export { ACTIVE };
