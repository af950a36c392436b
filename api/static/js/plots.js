// Plotly figures of a job: the Pareto scatter, hypervolume over trials, parallel coordinates.

import { GROUPS, METRICS, accuracyOf, groupOf, hoverText, isTrained } from "./trials.js";

export const PLOT_CONFIG = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"],
  toImageButtonOptions: { format: "png", scale: 2 },
};

const FONT = { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1b2333" };
const GRID = "#eef1f5";

export function baseLayout(extra) {
  return {
    font: FONT,
    paper_bgcolor: "#ffffff",
    plot_bgcolor: "#ffffff",
    margin: { l: 64, r: 24, t: 16, b: 52 },
    hoverlabel: { bgcolor: "#111827", bordercolor: "#111827", font: { color: "#f9fafb", size: 12, family: FONT.family }, align: "left" },
    ...extra,
  };
}

const axis = (title, extra) => ({
  title: { text: title, standoff: 8 }, gridcolor: GRID, zerolinecolor: "#d0d5dd", linecolor: "#d0d5dd", automargin: true, ...extra,
});

/** The non-dominated staircase of (x, y) points, x minimised, y maximised (or minimised). */
function staircase(points, maximiseY) {
  const sorted = [...points].sort((a, b) => a[0] - b[0] || (maximiseY ? b[1] - a[1] : a[1] - b[1]));
  const out = [];
  let best = maximiseY ? -Infinity : Infinity;
  for (const [x, y] of sorted) {
    if (maximiseY ? y > best : y < best) {
      out.push([x, y]);
      best = y;
    }
  }
  return out;
}

/**
 * The Pareto scatter: one trace per status group; untrained trials sit in a strip under
 * the plot when Y is an accuracy (they have none). Budget lines where an axis has a limit.
 *
 * @param {object[]} trials every trial of the job
 * @param {Set<number>} front numbers of the trials on the job's Pareto front
 * @param {object} limits the job's limits (bytes, ms)
 * @param {{x: string, y: string, color: string}} view
 * @param {Map} hoverCache trial number -> {trial, onFront, text}
 */
export function paretoFigure(trials, front, limits, view, hoverCache) {
  const xm = METRICS[view.x];
  const ym = METRICS[view.y];
  const cm = view.color === "status" ? null : METRICS[view.color];
  const grouped = new Map(GROUPS.map((g) => [g.key, []]));
  for (const trial of trials) {
    const key = groupOf(trial, front);
    if (key) grouped.get(key).push(trial);
  }
  // Untrained trials have no accuracy: with an accuracy on Y they go to a strip under the plot.
  const strip = Boolean(ym.trainedOnly) && GROUPS.some((g) => g.untrained && grouped.get(g.key).some((t) => xm.value(t) !== null));
  let cmin = Infinity;
  let cmax = -Infinity;
  if (cm) {
    for (const trial of trials) {
      const v = cm.value(trial);
      if (v !== null) {
        cmin = Math.min(cmin, cm.scale(v));
        cmax = Math.max(cmax, cm.scale(v));
      }
    }
  }
  const traces = [];
  const trainedPoints = [];
  let colourbarShown = false;
  for (const group of GROUPS) {
    const xs = [];
    const ys = [];
    const texts = [];
    const numbers = [];
    const colours = [];
    const inStrip = strip && group.untrained;
    for (const trial of grouped.get(group.key)) {
      const xv = xm.value(trial);
      if (xv === null) continue;
      let yv;
      if (inStrip) yv = 0;
      else {
        const raw = ym.value(trial);
        if (raw === null) continue;
        yv = ym.scale(raw);
      }
      xs.push(xm.scale(xv));
      ys.push(yv);
      numbers.push(trial.number);
      const onFront = group.key === "front";
      let cached = hoverCache.get(trial.number);
      if (!cached || cached.trial !== trial || cached.onFront !== onFront) {
        cached = { trial, onFront, text: hoverText(trial, onFront) };
        hoverCache.set(trial.number, cached);
      }
      texts.push(cached.text);
      if (cm) {
        const c = cm.value(trial);
        colours.push(c === null ? null : cm.scale(c));
      }
      if (!inStrip && (group.key === "front" || group.key === "complete")) trainedPoints.push([xm.scale(xv), yv]);
    }
    const marker = { symbol: group.symbol, size: group.size, color: group.color, line: { ...(group.line || {}) } };
    if (group.line && !group.line.color) marker.line.color = group.color;
    const colourable = cm && colours.length && colours.every((c) => c !== null);
    if (colourable) {
      Object.assign(marker, { color: colours, colorscale: "Viridis", cmin, cmax, showscale: !colourbarShown });
      if (!colourbarShown) marker.colorbar = { title: { text: cm.axis, side: "right" }, thickness: 12, len: 0.8 };
      colourbarShown = true;
      if (group.symbol.endsWith("-open") || group.symbol.startsWith("x-thin")) marker.line = { ...marker.line, color: colours, colorscale: "Viridis", cmin, cmax };
    }
    traces.push({
      type: "scatter",
      mode: "markers",
      name: `${group.label} (${xs.length})`,
      legendgroup: group.key,
      meta: group.key,
      x: xs,
      y: ys,
      text: texts,
      customdata: numbers,
      hovertemplate: "%{text}<extra></extra>",
      marker,
      yaxis: inStrip ? "y2" : "y",
      visible: xs.length ? true : "legendonly",
      showlegend: xs.length > 0,
    });
  }
  const maximiseY = Boolean(ym.trainedOnly);
  const stairs = view.x === "number" ? [] : staircase(trainedPoints, maximiseY);
  if (stairs.length > 1) {
    traces.unshift({
      type: "scatter", mode: "lines", name: "front in this view", x: stairs.map((p) => p[0]), y: stairs.map((p) => p[1]),
      line: { shape: "hv", color: "#f59e0b", width: 1.5, dash: "dot" }, hoverinfo: "skip", meta: "staircase",
    });
  }
  const shapes = [];
  const annotations = [];
  const xLimit = xm.limit && limits[xm.limit];
  if (typeof xLimit === "number") {
    const x = xm.scale(xLimit);
    shapes.push({ type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { color: "#dc2626", width: 1.5, dash: "dash" } });
    annotations.push({ x, y: 1, xref: "x", yref: "paper", text: `${xm.label} budget ${xm.fmt(xLimit)}`, showarrow: false, xanchor: "right", yanchor: "top", font: { color: "#dc2626", size: 11 }, bgcolor: "rgba(255,255,255,0.85)" });
  }
  const yLimit = ym.limit && limits[ym.limit];
  if (typeof yLimit === "number") {
    const y = ym.scale(yLimit);
    shapes.push({ type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: y, y1: y, line: { color: "#dc2626", width: 1.5, dash: "dash" } });
    annotations.push({ x: 1, y, xref: "paper", yref: "y", text: `${ym.label} budget ${ym.fmt(yLimit)}`, showarrow: false, xanchor: "right", yanchor: "bottom", font: { color: "#dc2626", size: 11 }, bgcolor: "rgba(255,255,255,0.85)" });
  }
  const layout = baseLayout({
    uirevision: `${view.x}|${view.y}`,
    hovermode: "closest",
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 12 } },
    margin: { l: 64, r: 24, t: 36, b: 52 },
    xaxis: axis(xm.axis, { anchor: strip ? "y2" : "y", type: view.x === "macs" ? "log" : "linear" }),
    yaxis: axis(ym.axis, { domain: strip ? [0.14, 1] : [0, 1] }),
    shapes,
    annotations,
  });
  if (strip) {
    layout.yaxis2 = {
      anchor: "x", domain: [0, 0.08], range: [-1, 1], showticklabels: false, showgrid: false, zeroline: false, fixedrange: true,
      title: { text: "not trained", font: { size: 10, color: "#667085" } }, linecolor: "#d0d5dd",
    };
  }
  return { data: traces, layout };
}

/** Hypervolume after each counted trial (`ParetoPublic.hypervolume_history`). */
export function hypervolumeFigure(history, xKey) {
  const x = history.map((e) => (xKey === "cpu_seconds" ? e.cpu_seconds : e.trials_done));
  return {
    data: [{
      type: "scatter", mode: "lines+markers", x, y: history.map((e) => e.hypervolume),
      customdata: history.map((e) => e.trial),
      hovertemplate: `${xKey === "cpu_seconds" ? "%{x:.1f} CPU s" : "%{x} trials"}<br>hypervolume %{y:.4f}<br>after trial %{customdata}<extra></extra>`,
      line: { shape: "hv", color: "#2563eb", width: 2 }, marker: { size: history.length > 200 ? 0 : 5, color: "#2563eb" }, cliponaxis: false,
      fill: "tozeroy", fillcolor: "rgba(37, 99, 235, 0.08)",
    }],
    layout: baseLayout({
      showlegend: false,
      xaxis: axis(xKey === "cpu_seconds" ? "Trial CPU time (s)" : "Trials done", { rangemode: "tozero" }),
      // Headroom above the last step, so that its marker is not cut by the frame.
      yaxis: axis("Hypervolume (normalised)", { range: [0, Math.max(...history.map((e) => e.hypervolume), 0.01) * 1.12] }),
    }),
  };
}

function dimension(label, values) {
  const defined = values.filter((v) => v !== null && v !== undefined);
  if (!defined.length) return null;
  if (defined.every((v) => typeof v === "number")) {
    const lo = Math.min(...defined);
    const hi = Math.max(...defined);
    if (lo === hi) return null;
    return { label, values: values.map((v) => (v === null || v === undefined ? lo : v)), range: [lo, hi] };
  }
  const levels = [...new Set(defined.map(String))].sort();
  if (levels.length < 2) return null;
  return {
    label, values: values.map((v) => levels.indexOf(String(v ?? levels[0]))),
    tickvals: levels.map((_, i) => i), ticktext: levels, range: [0, levels.length - 1],
  };
}

/** Parallel coordinates of the searched parameters (constant ones left out) and the outcome. */
export function parcoordsFigure(trials, front, colourBy) {
  const rows = trials.filter((t) => t.params && Object.keys(t.params).length && (colourBy === "status" || isTrained(t)));
  if (!rows.length) return null;
  const names = [];
  for (const t of rows) for (const k of Object.keys(t.params)) if (!names.includes(k)) names.push(k);
  const dims = names.map((k) => dimension(k, rows.map((t) => t.params[k]))).filter(Boolean);
  let line;
  if (colourBy === "status") {
    const keys = GROUPS.map((g) => g.key);
    const n = keys.length;
    const colorscale = [];
    GROUPS.forEach((g, i) => { colorscale.push([i / n, g.color], [(i + 1) / n, g.color]); });
    // Interrupted trials (no group) take the colour of failed ones.
    line = { color: rows.map((t) => (keys.indexOf(groupOf(t, front) || "failed") + 0.5) / n), colorscale, cmin: 0, cmax: 1 };
  } else {
    const acc = rows.map((t) => (accuracyOf(t) ?? 0) * 100);
    const lo = Math.min(...acc);
    const hi = Math.max(...acc);
    // First, so that the outcome is in view without scrolling.
    dims.unshift({ label: "accuracy %", values: acc, range: lo < hi ? [lo, hi] : [lo - 1, hi + 1] });
    line = { color: acc, colorscale: "Viridis", showscale: true, colorbar: { title: { text: "accuracy %" }, thickness: 12 } };
  }
  if (!dims.length) return null;
  return {
    data: [{ type: "parcoords", dimensions: dims, line, labelangle: -25, labelfont: { size: 11 }, tickfont: { size: 10 } }],
    layout: baseLayout({ margin: { l: 60, r: 60, t: 70, b: 24 } }),
    width: Math.max(dims.length * 96, 600),
  };
}

export function hasWebGL() {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl") || canvas.getContext("experimental-webgl"));
  } catch {
    return false;
  }
}
