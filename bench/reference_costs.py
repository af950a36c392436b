"""Full CostReports of the reference networks on three devices, as markdown tables.

Usage: .venv/bin/python bench/reference_costs.py > /tmp/tables.md
Writes bench/results/reference_costs.json; docs/hw_models.md quotes the tables.
"""

from __future__ import annotations

import json
from pathlib import Path

from hw_models import estimate
from hw_models.reference import REFERENCE_NETWORKS

DEVICES = ("stm32f446re", "stm32f746zg", "rp2040")
RESULTS = Path(__file__).resolve().parent / "results"
KIB = 1024


def main() -> None:
    results = {}
    for name, make in REFERENCE_NETWORKS.items():
        net = make()
        print(f"\n#### {name}\n")
        print("| | " + " | ".join(DEVICES) + " |")
        print("|---|" + "---|" * len(DEVICES))
        reports = {d: estimate(net, d) for d in DEVICES}
        ideal = estimate(net, DEVICES[0], "ideal")
        results[name] = {d: r.to_dict() for d, r in reports.items()} | {"ideal": ideal.to_dict()}
        rows = [
            ("params (non-zero)", lambda r: f"{r.params:,} ({r.nonzero_params:,})"),
            ("MACs", lambda r: f"{r.macs:,}"),
            ("model bytes", lambda r: f"{r.model_bytes:,}"),
            ("runtime code bytes", lambda r: f"{r.runtime_code_bytes:,}"),
            ("**flash bytes**", lambda r: f"**{r.flash_bytes:,}** ({100 * r.flash_bytes / r.device_flash_bytes:.0f}%)"),
            ("arena bytes (planned)", lambda r: f"{r.arena_bytes:,}"),
            ("live-bytes lower bound", lambda r: f"{r.peak_live_bytes:,}"),
            ("largest scratch bytes", lambda r: f"{r.scratch_bytes:,}"),
            ("persistent bytes", lambda r: f"{r.persistent_bytes:,}"),
            ("firmware SRAM bytes", lambda r: f"{r.sram_overhead_bytes:,}"),
            ("**SRAM bytes**", lambda r: f"**{r.sram_bytes:,}** ({100 * r.sram_bytes / r.device_sram_bytes:.0f}%)"),
            ("SpArSe working memory", lambda r: f"{r.working_memory_bytes:,}"),
            ("**latency ms**", lambda r: f"**{r.latency_ms:.1f}**"),
            ("energy mJ", lambda r: f"{r.energy_mj:.2f}"),
        ]
        for label, fmt in rows:
            print(f"| {label} | " + " | ".join(fmt(reports[d]) for d in DEVICES) + " |")
        print(
            f"\n`ideal` runtime (papers' accounting): SRAM = working memory {ideal.sram_bytes:,} B, "
            f"model = {ideal.model_bytes:,} B of non-zeros."
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reference_costs.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
