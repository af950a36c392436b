// What a trial shows: its metrics, its status group in the plots, its architecture, and CSV rows.

import { KIB, escapeHtml, kib, mj, ms, pct, si } from "./format.js";

const TRAINED = new Set(["complete", "stopped"]);

export function isTrained(trial) {
  return TRAINED.has(trial.status);
}

/** Validation accuracy of a trained trial (its last epoch's when stopped early); null otherwise. */
export function accuracyOf(trial) {
  if (!isTrained(trial)) return null;
  const measured = trial.measured && trial.measured.val_accuracy;
  if (typeof measured === "number") return measured;
  const curve = trial.intermediate_accuracy || {};
  const steps = Object.keys(curve).map(Number).sort((a, b) => a - b);
  return steps.length ? curve[steps[steps.length - 1]] : null;
}

const cost = (name) => (trial) => {
  const value = trial.costs && trial.costs[name];
  return typeof value === "number" ? value : null;
};

/** Plottable metrics: raw value (bytes, ms, MACs, fraction), axis scale and formatting. */
export const METRICS = {
  accuracy: { label: "Validation accuracy", axis: "Validation accuracy (%)", value: accuracyOf, scale: (v) => v * 100, fmt: pct, trainedOnly: true },
  test_accuracy: {
    label: "Test accuracy", axis: "Test accuracy (%)", scale: (v) => v * 100, fmt: pct, trainedOnly: true,
    value: (t) => (isTrained(t) && t.measured && typeof t.measured.test_accuracy === "number" ? t.measured.test_accuracy : null),
  },
  flash_bytes: { label: "Flash", axis: "Flash (KiB)", value: cost("flash_bytes"), scale: (v) => v / KIB, fmt: kib, limit: "flash_bytes" },
  sram_bytes: { label: "SRAM", axis: "SRAM (KiB)", value: cost("sram_bytes"), scale: (v) => v / KIB, fmt: kib, limit: "sram_bytes" },
  macs: { label: "MACs", axis: "MACs", value: cost("macs"), scale: (v) => v, fmt: si },
  latency_ms: { label: "Latency", axis: "Latency (ms)", value: cost("latency_ms"), scale: (v) => v, fmt: ms, limit: "latency_ms" },
  energy_mj: { label: "Energy", axis: "Energy per inference (mJ)", value: cost("energy_mj"), scale: (v) => v, fmt: mj },
  number: { label: "Trial number", axis: "Trial", value: (t) => t.number, scale: (v) => v, fmt: (v) => `#${v}` },
};

export const X_METRICS = ["flash_bytes", "sram_bytes", "macs", "latency_ms", "energy_mj", "number"];
export const Y_METRICS = ["accuracy", "test_accuracy", "flash_bytes", "sram_bytes", "macs", "latency_ms", "energy_mj"];
export const COLOR_METRICS = ["accuracy", "flash_bytes", "sram_bytes", "macs", "latency_ms", "energy_mj", "number"];

/** Status groups of the plots, in legend order; `untrained` ones have no accuracy. */
export const GROUPS = [
  { key: "front", label: "Pareto front", color: "#f59e0b", symbol: "diamond", size: 12, line: { color: "#92400e", width: 1 } },
  { key: "complete", label: "complete", color: "#3b82f6", symbol: "circle", size: 8, line: { color: "#1e40af", width: 0.5 } },
  { key: "stopped", label: "stopped early", color: "#9333ea", symbol: "diamond-open", size: 9, line: { width: 1.5 } },
  { key: "infeasible", label: "infeasible (over budget)", color: "#ef4444", symbol: "x-thin-open", size: 8, line: { width: 1.5 }, untrained: true },
  { key: "failed", label: "failed", color: "#6b7280", symbol: "triangle-down", size: 9, untrained: true },
  { key: "running", label: "running", color: "#10b981", symbol: "circle-open", size: 9, line: { width: 1.5 }, untrained: true },
];

/** The plot group of a trial (interrupted trials are not plotted: their point runs again). */
export function groupOf(trial, front) {
  switch (trial.status) {
    case "complete": return front.has(trial.number) ? "front" : "complete";
    case "stopped": return "stopped";
    case "infeasible": return "infeasible";
    case "failed": return "failed";
    case "running":
    case "waiting": return "running";
    default: return null;
  }
}

// --- architecture ------------------------------------------------------------------------

function value(v) {
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number" && !Number.isInteger(v)) return Number(v.toPrecision(3)).toString();
  return String(v);
}

/** The point's parameters grouped by block (`conv0_channels` -> block conv0, key channels);
 * a block beyond the point's `n_<kind>` count (or of depth 0) is inactive. */
export function architecture(params) {
  const blocks = new Map();
  const globals = [];
  for (const [key, v] of Object.entries(params || {})) {
    const match = /^([a-z]+)(\d+)_(.+)$/.exec(key);
    if (!match) {
      globals.push([key, v]);
      continue;
    }
    const name = `${match[1]}${match[2]}`;
    if (!blocks.has(name)) blocks.set(name, { name, kind: match[1], index: Number(match[2]), items: [] });
    blocks.get(name).items.push([match[3], v]);
  }
  for (const block of blocks.values()) {
    const count = params[`n_${block.kind}`] ?? params[`n_${block.kind}s`];
    const depth = block.items.find(([k]) => k === "depth");
    block.active = (typeof count === "number" ? block.index < count : true) && !(depth && depth[1] === 0);
  }
  return { globals, blocks: [...blocks.values()] };
}

export function formatValue(v) {
  return value(v);
}

/** Hover text of a trial: every metric, then its architecture (active blocks). */
export function hoverText(trial, onFront) {
  const acc = accuracyOf(trial);
  const test = METRICS.test_accuracy.value(trial);
  const lines = [
    `<b>Trial ${trial.number}</b> · ${trial.status}${onFront ? " · Pareto front" : ""}`,
    acc === null ? "not trained" : `accuracy ${pct(acc)}${test === null ? "" : ` · test ${pct(test)}`}`,
    `flash ${kib(cost("flash_bytes")(trial))} · SRAM ${kib(cost("sram_bytes")(trial))}`,
    `MACs ${si(cost("macs")(trial))} · latency ${ms(cost("latency_ms")(trial))} · energy ${mj(cost("energy_mj")(trial))}`,
  ];
  if (trial.reason) lines.push(`<i>${escapeHtml(trial.reason).slice(0, 160)}</i>`);
  const { globals, blocks } = architecture(trial.params);
  if (globals.length || blocks.length) lines.push("──────────");
  if (globals.length) lines.push(globals.map(([k, v]) => `${k} ${escapeHtml(value(v))}`).join(" · "));
  for (const block of blocks) {
    if (!block.active) continue;
    lines.push(`${block.name}: ${block.items.map(([k, v]) => `${k} ${escapeHtml(value(v))}`).join(" · ")}`);
  }
  return lines.join("<br>");
}

// --- CSV ---------------------------------------------------------------------------------

function csvCell(v) {
  if (v === null || v === undefined) return "";
  const text = typeof v === "object" ? JSON.stringify(v) : String(v);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** Every trial as CSV: one row per trial in number order, raw units (bytes, ms, MACs). */
export function trialsCsv(trials, front) {
  const sorted = [...trials].sort((a, b) => a.number - b.number);
  const paramNames = [];
  const constraintNames = [];
  const seen = new Set();
  for (const t of sorted) {
    for (const k of Object.keys(t.params || {})) if (!seen.has(`p:${k}`)) { seen.add(`p:${k}`); paramNames.push(k); }
    for (const k of Object.keys(t.constraints || {})) if (!seen.has(`c:${k}`)) { seen.add(`c:${k}`); constraintNames.push(k); }
  }
  const header = [
    "number", "status", "feasible", "on_pareto_front", "val_accuracy", "test_accuracy",
    "flash_bytes", "sram_bytes", "macs", "latency_ms", "energy_mj", "duration_s", "epochs_completed", "reason",
    ...constraintNames.map((k) => `constraint_${k}`), ...paramNames.map((k) => `param_${k}`),
  ];
  const rows = sorted.map((t) => [
    t.number, t.status, t.feasible, front.has(t.number), accuracyOf(t), METRICS.test_accuracy.value(t),
    ...["flash_bytes", "sram_bytes", "macs", "latency_ms", "energy_mj"].map((m) => cost(m)(t)),
    t.duration_s, t.measured ? t.measured.epochs_completed : null, t.reason,
    ...constraintNames.map((k) => (t.constraints || {})[k]), ...paramNames.map((k) => (t.params || {})[k]),
  ]);
  return [header, ...rows].map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}
