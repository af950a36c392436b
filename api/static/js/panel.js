// The trial panel: metrics, architecture, per-layer costs and compression, training curve, export.

import { api, downloadFrom } from "./api.js";
import { KIB, duration, fill, h, kib, mj, ms, pct, si, spinner, statusBadge } from "./format.js";
import { PLOT_CONFIG, baseLayout } from "./plots.js";
import { METRICS, accuracyOf, architecture, formatValue, isTrained } from "./trials.js";

// GET .../export?format=F answers a zip: the format's model files and manifest.json.
const EXPORTS = [
  ["pytorch", "PyTorch"],
  ["onnx", "ONNX"],
  ["onnx-int8", "ONNX int8"],
  ["tflite", "TFLite int8 (TFLM)"],
];

/** How a weight is stored, in words: "sparse 42 % (csr) · int8". */
export function storage(weight) {
  const s = weight.structure || {};
  const bits = weight.bits === 8 ? "int8" : `${weight.bits}-bit`;
  const factors = (f) => (Array.isArray(f) ? f.map((p) => p.join("×")).join(" ⊗ ") : "");
  switch (s.kind) {
    case "dense": return `dense · ${bits}`;
    case "sparse": return `sparse ${pct(s.density, 0)} (${s.format}) · ${bits}`;
    case "low_rank": return `low-rank, rank ${s.rank} · ${bits}`;
    case "kronecker": return `Kronecker ${factors(s.factors)}${s.doping_nonzeros ? ` + ${s.doping_nonzeros} doped` : ""} · ${bits}`;
    case "hybrid_kronecker": return `hybrid Kronecker, ${s.dense_rows} dense rows · ${bits}`;
    case "hmd": return `HMD, ${s.dense_rows} dense rows, ${s.rank1_blocks} rank-1 blocks · ${bits}`;
    default: return `${s.kind || "?"} · ${bits}`;
  }
}

function metric(label, value, sub) {
  return h("div", { class: "metric" }, h("div", { class: "k" }, label), h("div", { class: "v" }, value), sub ? h("div", { class: "s" }, sub) : null);
}

function ofLimit(value, limit) {
  return typeof value === "number" && typeof limit === "number" ? `${pct(value / limit, 0)} of the ${kibOrMs(limit)} budget` : "";
}

function kibOrMs(limit) {
  return limit > 1000 ? kib(limit, 0) : ms(limit);
}

export class TrialPanel {
  constructor({ job, trial, onFront, limits, apiBase, onClose }) {
    this.job = job;
    this.trial = trial;
    this.number = trial.number;
    this.onFront = onFront;
    this.limits = limits || {};
    this.apiBase = apiBase;
    this.onClose = onClose;
    this.layers = null;
    this.onKey = (e) => { if (e.key === "Escape") this.onClose(); };
  }

  open() {
    this.backdrop = h("div", { class: "drawer-backdrop" });
    this.backdrop.addEventListener("click", () => this.onClose());
    this.body = h("div", { class: "drawer-body" });
    this.titleEl = h("div", { class: "toolbar" });
    const close = h("button", { type: "button", class: "btn btn-ghost", "aria-label": "Close the trial panel", id: "close-trial" }, "✕");
    close.addEventListener("click", () => this.onClose());
    this.element = h("aside", { class: "drawer", id: "trial-panel", role: "dialog", "aria-modal": "true", "aria-labelledby": "trial-title", "data-trial": this.number },
      h("div", { class: "drawer-head" }, this.titleEl, h("span", { class: "spacer" }), close),
      this.body);
    document.body.append(this.backdrop, this.element);
    document.addEventListener("keydown", this.onKey);
    this.render();
    close.focus();
    this.loadLayers();
  }

  close() {
    document.removeEventListener("keydown", this.onKey);
    for (const el of this.element.querySelectorAll(".js-plotly-plot")) window.Plotly.purge(el);
    this.element.remove();
    this.backdrop.remove();
  }

  update(trial, onFront) {
    if (trial === this.trial && onFront === this.onFront) return;
    const statusChanged = trial.status !== this.trial.status;
    this.trial = trial;
    this.onFront = onFront;
    this.render();
    if (statusChanged) this.loadLayers();
  }

  async loadLayers() {
    this.layers = null;
    this.renderLayers();
    try {
      this.layers = await api(`${this.apiBase}/trials/${this.number}/layers`);
    } catch (err) {
      this.layers = { error: err.message };
    }
    if (this.element.isConnected) this.renderLayers();
  }

  render() {
    const t = this.trial;
    for (const el of this.body.querySelectorAll(".js-plotly-plot")) window.Plotly.purge(el);
    fill(this.titleEl,
      h("h2", { id: "trial-title" }, `Trial ${t.number}`), statusBadge(t.status),
      this.onFront ? h("span", { class: "badge front" }, "★ Pareto front") : null,
      t.status !== "running" && t.status !== "waiting" ? h("span", { class: `badge ${t.feasible ? "complete" : "infeasible"}` }, t.feasible ? "within budget" : "over budget") : null);
    const acc = accuracyOf(t);
    const test = METRICS.test_accuracy.value(t);
    const c = t.costs || {};
    const m = t.measured || {};
    this.layersEl = h("div", { id: "trial-layers" });
    this.compressionEl = h("div", { id: "compression-plot", class: "plot-sm" });
    this.curveEl = h("div", { id: "curve-plot", class: "plot-sm" });
    fill(this.body,
      t.reason ? h("div", { class: `notice ${t.status === "failed" ? "error" : "warn"}` }, h("div", {}, h("div", { class: "title" }, "Why it was not trained to the end"), h("div", {}, t.reason))) : null,
      h("section", {}, h("h3", {}, "Metrics"), h("div", { class: "metrics" },
        metric("Validation accuracy", acc === null ? "not trained" : pct(acc), m.epochs_completed ? `${m.epochs_completed} epoch${m.epochs_completed === 1 ? "" : "s"}` : ""),
        metric("Test accuracy", test === null ? "–" : pct(test)),
        metric("Training time", duration(m.train_seconds ?? t.duration_s), t.duration_s ? `${duration(t.duration_s)} in all` : ""),
        metric("Flash", kib(c.flash_bytes), ofLimit(c.flash_bytes, this.limits.flash_bytes)),
        metric("SRAM", kib(c.sram_bytes), ofLimit(c.sram_bytes, this.limits.sram_bytes)),
        metric("Latency", ms(c.latency_ms), this.limits.latency_ms ? ofLimit(c.latency_ms, this.limits.latency_ms) : ""),
        metric("MACs", si(c.macs)),
        metric("Energy", mj(c.energy_mj), "per inference"),
        metric("Non-zero parameters", si(m.nonzero_params), "measured after training"))),
      this.exportSection(),
      h("section", {}, h("h3", {}, "Architecture"), this.architectureView()),
      h("section", {}, h("h3", {}, "Cost per layer"), this.layersEl),
      h("section", {}, h("h3", {}, "Compression per layer"), h("div", { class: "muted small" }, "Each layer's size in the model file as searched, against the same layer with dense weights."), this.compressionEl),
      h("section", {}, h("h3", {}, "Training curve"), this.curveEl),
    );
    this.renderCurve();
    this.renderLayers();
  }

  exportSection() {
    if (!isTrained(this.trial) || !this.trial.artifact_id) return null;
    const status = h("div", { class: "muted small", id: "export-status" });
    const buttons = EXPORTS.map(([format, label]) => {
      const href = `${this.apiBase}/trials/${this.number}/export?format=${format}`;
      const link = h("a", { class: "btn btn-sm", href, "data-export": format, download: "" }, `Export ${label}`);
      link.addEventListener("click", async (e) => {
        // Fetched rather than followed: the token travels in a header, and an error stays here.
        e.preventDefault();
        status.textContent = `Preparing ${label}…`;
        try {
          await downloadFrom(href, `trial-${this.number}-${format}.zip`);
          status.textContent = "";
        } catch (err) {
          status.textContent = err.status === 404 && /Not Found/i.test(err.message)
            ? "Export is not available on this server yet."
            : `Export failed: ${err.message}`;
        }
      });
      return link;
    });
    return h("section", {}, h("h3", {}, "Export"), h("div", { class: "exports", id: "exports" }, buttons), status);
  }

  architectureView() {
    const { globals, blocks } = architecture(this.trial.params);
    if (!globals.length && !blocks.length) return h("div", { class: "muted" }, "No parameters recorded yet.");
    const kv = ([k, v]) => h("span", { class: "kv" }, h("span", { class: "k" }, k), h("span", {}, formatValue(v)));
    return h("div", { class: "arch", id: "architecture" },
      globals.length ? h("div", { class: "block" }, h("span", { class: "name" }, "network"), h("div", {}, globals.map(kv))) : null,
      blocks.map((b) => h("div", { class: `block ${b.active ? "" : "inactive"}`, title: b.active ? "" : "Not part of this network (beyond its depth)" },
        h("span", { class: "name" }, b.name), h("div", {}, b.items.map(kv), b.active ? null : h("span", { class: "muted small" }, "(unused)")))));
  }

  renderLayers() {
    if (!this.layersEl) return;
    const data = this.layers;
    if (data === null) {
      fill(this.layersEl, spinner("Costing the network layer by layer…"));
      fill(this.compressionEl);
      return;
    }
    if (data.error) {
      fill(this.layersEl, h("div", { class: "notice warn" }, h("div", {}, data.error)));
      fill(this.compressionEl);
      return;
    }
    const rows = data.layers.map((l) => h("tr", {},
      h("td", {}, h("div", { class: "mono" }, l.name), h("div", { class: "muted small" }, l.op, l.fused.length ? ` + ${l.fused.join(", ")}` : "")),
      h("td", { class: "mono", title: `${kib(l.output_bytes, 2)} of activations` }, l.output_shape.join("×")),
      h("td", { class: "num" }, l.params ? `${l.nonzero_params.toLocaleString("en-US")} / ${l.params.toLocaleString("en-US")}` : "–"),
      h("td", {}, l.weights.length ? l.weights.map((w) => h("div", {}, l.weights.length > 1 ? `${w.name}: ` : "", storage(w))) : h("span", { class: "muted" }, "no weights")),
      h("td", { class: "num" }, kib(l.model_bytes, 2)),
      h("td", { class: "num", title: l.weights.length ? `${kib(l.dense_model_bytes, 2)} with dense weights` : "" }, l.weights.length && l.compression_ratio ? `×${l.compression_ratio.toFixed(2)}` : "–"),
      h("td", { class: "num" }, si(l.macs)),
      h("td", { class: "num" }, l.latency_ms.toFixed(3))));
    const numeric = new Set([2, 4, 5, 6, 7]);
    const table = h("table", { class: "data compact", id: "layer-table" },
      h("thead", {}, h("tr", {}, ["Layer", "Output", "Non-zero / params", "Weights stored as", "Model", "vs dense", "MACs", "ms"].map((t, i) => h("th", { class: numeric.has(i) ? "num" : "" }, t)))),
      h("tbody", {}, rows),
      h("tfoot", {}, h("tr", {},
        h("td", { colspan: 2 }, "Network"),
        h("td", { class: "num" }, `${data.nonzero_params.toLocaleString("en-US")} / ${data.params.toLocaleString("en-US")}`),
        h("td", {}),
        h("td", { class: "num" }, kib(data.model_bytes, 2)),
        h("td", {}),
        h("td", { class: "num" }, si(data.macs)),
        h("td", { class: "num" }, data.latency_ms.toFixed(3)))));
    const flash = `Flash ${kib(data.flash_bytes, 2)} = model ${kib(data.model_bytes, 2)} + runtime code ${kib(data.runtime_code_bytes, 2)} (device ${kib(data.device_flash_bytes, 0)})`;
    const sram = `SRAM ${kib(data.sram_bytes, 2)} = arena ${kib(data.arena_bytes, 2)} + persistent ${kib(data.persistent_bytes, 2)} + firmware ${kib(data.sram_overhead_bytes, 2)} (device ${kib(data.device_sram_bytes, 0)})`;
    fill(this.layersEl,
      h("div", { class: "muted small" }, `Planned network on ${data.device}, ${data.runtime} runtime; the model size includes graph metadata.`),
      h("div", { class: "table-wrap" }, table),
      h("div", { class: "muted small", style: { marginTop: "6px" } }, flash, h("br"), sram));
    this.renderCompression(data.layers.filter((l) => l.weights.length));
  }

  renderCompression(layers) {
    if (!layers.length) {
      fill(this.compressionEl, h("div", { class: "muted" }, "No layer has weights."));
      return;
    }
    const names = layers.map((l) => l.name);
    const height = Math.max(180, 60 + layers.length * 34);
    this.compressionEl.style.height = `${height}px`;
    window.Plotly.react(this.compressionEl, [
      { type: "bar", orientation: "h", name: "dense", y: names, x: layers.map((l) => l.dense_model_bytes / KIB), marker: { color: "#cbd5e1" }, hovertemplate: "%{y}: %{x:.2f} KiB dense<extra></extra>" },
      {
        type: "bar", orientation: "h", name: "as searched", y: names, x: layers.map((l) => l.model_bytes / KIB), marker: { color: "#2563eb" },
        text: layers.map((l) => (l.compression_ratio ? `×${l.compression_ratio.toFixed(1)}` : "")), textposition: "outside", cliponaxis: false,
        customdata: layers.map((l) => l.weights.map(storage).join("; ")),
        hovertemplate: "%{y}: %{x:.2f} KiB<br>%{customdata}<extra></extra>",
      },
    ], baseLayout({
      barmode: "group", bargap: 0.25, legend: { orientation: "h", y: 1.08, x: 0 },
      margin: { l: 90, r: 40, t: 24, b: 40 },
      xaxis: { title: { text: "Model file (KiB)" }, gridcolor: "#eef1f5", rangemode: "tozero" },
      yaxis: { autorange: "reversed", automargin: true },
    }), { ...PLOT_CONFIG, displayModeBar: false });
  }

  renderCurve() {
    const curve = this.trial.intermediate_accuracy || {};
    const epochs = Object.keys(curve).map(Number).sort((a, b) => a - b);
    if (!epochs.length) {
      this.curveEl.style.height = "auto";
      fill(this.curveEl, h("div", { class: "muted" }, isTrained(this.trial) ? "No per-epoch accuracy was recorded." : "Not trained: no training curve."));
      return;
    }
    const traces = [{
      type: "scatter", mode: "lines+markers", name: "validation", x: epochs.map((e) => e + 1), y: epochs.map((e) => curve[e] * 100),
      line: { color: "#2563eb", width: 2 }, marker: { size: 7 }, hovertemplate: "epoch %{x}: %{y:.2f} %<extra></extra>",
    }];
    const test = METRICS.test_accuracy.value(this.trial);
    if (test !== null) {
      traces.push({
        type: "scatter", mode: "markers", name: "test (final)", x: [epochs[epochs.length - 1] + 1], y: [test * 100],
        marker: { color: "#16a34a", size: 10, symbol: "star" }, hovertemplate: "test: %{y:.2f} %<extra></extra>",
      });
    }
    window.Plotly.react(this.curveEl, traces, baseLayout({
      legend: { orientation: "h", y: 1.1, x: 0 }, margin: { l: 56, r: 20, t: 24, b: 44 },
      xaxis: { title: { text: "Epoch" }, dtick: 1, gridcolor: "#eef1f5" },
      yaxis: { title: { text: "Accuracy (%)" }, gridcolor: "#eef1f5" },
    }), { ...PLOT_CONFIG, displayModeBar: false });
  }
}

