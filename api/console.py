"""How the command line prints the service's JSON: trials, jobs and Pareto fronts.

Sizes are printed in KiB (the edge of the system); the API and JSON output keep bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

KIB = 1024


def kib(n_bytes: float) -> str:
    """``n_bytes`` in KiB with one decimal."""
    return f"{n_bytes / KIB:.1f}"


def trial_line(trial: Mapping[str, Any]) -> str:
    """One line per finished trial: number, status, validation accuracy, flash, SRAM, reason."""
    costs = trial.get("costs") or {}
    accuracy = (trial.get("measured") or {}).get("val_accuracy")
    parts = [f"trial {trial['number']:>4}", f"{trial['status']:<11}"]
    parts.append(f"acc {100 * accuracy:5.1f}%" if accuracy is not None else "acc     -")
    for metric, label in (("flash_bytes", "flash"), ("sram_bytes", "SRAM")):
        if costs.get(metric) is not None:
            parts.append(f"{label} {kib(costs[metric])} KiB")
    if trial.get("reason"):
        parts.append(f"({trial['reason']})")
    return "  ".join(parts)


def job_summary(job: Mapping[str, Any]) -> str:
    """``job ID STATUS: done/budget trials, best feasible accuracy X%; error: ...``."""
    progress = job["progress"]
    line = f"job {job['id']} {job['status']}: {progress['trials_done']}/{progress['n_trials']} trials"
    if job.get("best_accuracy") is not None:
        line += f", best feasible accuracy {100 * job['best_accuracy']:.1f}%"
    if job.get("error"):
        line += f"; error: {job['error']}"
    return line


_FRONT_COLUMNS: Sequence[tuple[str, str, Any]] = (
    ("flash_bytes", "flash KiB", kib),
    ("sram_bytes", "SRAM KiB", kib),
    ("macs", "MACs", lambda v: f"{v:,.0f}"),
    ("latency_ms", "latency ms", lambda v: f"{v:.2f}"),
)


def front_table(pareto: Mapping[str, Any], max_rows: int = 20) -> str:
    """GET /api/jobs/{id}/pareto as a plain-text table, most accurate first."""
    front = pareto["pareto_front"]
    done = sum(pareto["counts"].get(s, 0) for s in ("complete", "infeasible", "stopped", "failed"))
    title = f"Pareto front: {len(front)} of {done} trials; hypervolume {pareto['hypervolume']:.4f}"
    if not front:
        return f"{title}\n(empty: no complete trial within the limits yet)"
    headers = ["trial", "val acc %", "test acc %"] + [header for _, header, _ in _FRONT_COLUMNS]
    rows = []
    for trial in front[:max_rows]:
        measured = trial.get("measured") or {}
        cells = [str(trial["number"])]
        for key in ("val_accuracy", "test_accuracy"):
            cells.append("-" if measured.get(key) is None else f"{100 * measured[key]:.2f}")
        for metric, _, fmt in _FRONT_COLUMNS:
            value = (trial.get("costs") or {}).get(metric)
            cells.append("-" if value is None else fmt(value))
        rows.append(cells)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    if len(front) > max_rows:
        lines.append(f"... and {len(front) - max_rows} more")
    return "\n".join(lines)
