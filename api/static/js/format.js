// Formatting and small DOM helpers. Sizes arrive in bytes and are shown in KiB (the UI is an edge).

export const KIB = 1024;

/** Build an element: h("div", {class: "x", onclick: f}, child, "text", ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "html") el.innerHTML = value;
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Replace the children of `el` (null, undefined and false are skipped, arrays flattened). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

export function kib(bytes, digits = 1) {
  return isNum(bytes) ? `${(bytes / KIB).toFixed(digits)} KiB` : "–";
}

export function pct(fraction, digits = 1) {
  return isNum(fraction) ? `${(fraction * 100).toFixed(digits)} %` : "–";
}

export function num(value, digits = 3) {
  if (!isNum(value)) return "–";
  return Number(value.toPrecision(digits)).toLocaleString("en-US");
}

/** 1234567 -> "1.23 M". */
export function si(value) {
  if (!isNum(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(2)} G`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(2)} M`;
  if (abs >= 1e3) return `${(value / 1e3).toFixed(1)} k`;
  return `${Math.round(value)}`;
}

export function ms(value) {
  return isNum(value) ? `${value < 10 ? value.toFixed(2) : value.toFixed(1)} ms` : "–";
}

export function mj(value) {
  return isNum(value) ? `${value < 1 ? value.toFixed(3) : value.toFixed(2)} mJ` : "–";
}

/** Seconds as "42 s", "3 min 05 s", "2 h 10 min". */
export function duration(seconds) {
  if (!isNum(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

export function dateTime(iso) {
  const t = parseTime(iso);
  if (t === null) return "–";
  return new Date(t).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** Seconds a job has run: since its first claim, to its end or now. */
export function elapsedSeconds(job, now = Date.now()) {
  const start = parseTime(job.started_at);
  if (start === null) return null;
  const active = job.status === "running" || job.status === "cancelling";
  const end = active ? now : (parseTime(job.finished_at) ?? parseTime(job.updated_at) ?? now);
  return Math.max(0, (end - start) / 1000);
}

export function statusBadge(status, label) {
  return h("span", { class: `badge ${status}` }, label || status);
}

export function progressBar(done, total, status) {
  const fraction = total > 0 ? Math.min(done / total, 1) : 0;
  return h(
    "div",
    { class: `progress ${status || ""}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done },
    h("div", { class: "bar" }, h("div", { class: "fill", style: { width: `${(fraction * 100).toFixed(1)}%` } })),
    h("span", { class: "count" }, `${done} / ${total}`),
  );
}

export function spinner(text) {
  return h("div", { class: "loading" }, h("span", { class: "spinner" }), " ", text || "Loading…");
}

export function emptyState(title, text, icon = "inbox") {
  const icons = {
    inbox: '<svg width="40" height="40" viewBox="0 0 24 24" fill="none" stroke="#98a2b3" stroke-width="1.5"><path d="M3 13h5l2 3h4l2-3h5"/><path d="M5 5h14l2 8v6H3v-6z"/></svg>',
    clock: '<svg width="40" height="40" viewBox="0 0 24 24" fill="none" stroke="#6366f1" stroke-width="1.5"><circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/></svg>',
    error: '<svg width="40" height="40" viewBox="0 0 24 24" fill="none" stroke="#dc2626" stroke-width="1.5"><circle cx="12" cy="12" r="9"/><path d="M12 7v6M12 16.5v.5"/></svg>',
    run: '<svg width="40" height="40" viewBox="0 0 24 24" fill="none" stroke="#2563eb" stroke-width="1.5"><path d="M4 19l5-7 4 3 7-9"/></svg>',
    stop: '<svg width="40" height="40" viewBox="0 0 24 24" fill="none" stroke="#667085" stroke-width="1.5"><rect x="5" y="5" width="14" height="14" rx="2"/></svg>',
  };
  return h("div", { class: "empty-state" }, h("div", { html: icons[icon] || icons.inbox }), h("div", { class: "title" }, title), h("div", {}, text));
}

/** A short random key (Idempotency-Key of a submission). */
export function randomKey() {
  if (window.crypto && crypto.randomUUID) {
    try { return crypto.randomUUID(); } catch { /* not a secure context */ }
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}
