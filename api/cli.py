"""The `sparse-nas` command line.

Subcommands:
    devices                      the device catalogue
    cost NET.json --device NAME  predicted flash / SRAM / MACs / latency of a network
    datasets [list|download]     the datasets and their files
    search SPEC.yaml             run (or resume) a search job here; prints the Pareto front
Sizes are printed in KiB (the edge of the system); JSON output keeps bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from api.settings import get_settings
from hw_models import (
    CostReport,
    DeviceSpec,
    HardwareModelError,
    NetworkSpec,
    estimate,
    get_device,
    list_devices,
    load_device,
)
from hw_models.runtimes import RUNTIMES
from sparse_nas.errors import SparseNASError

if TYPE_CHECKING:
    from sparse_nas.search import TrialRecord

KIB = 1024


def _kib(n_bytes: float) -> str:
    return f"{n_bytes / KIB:.1f}"


def _cmd_devices(args: argparse.Namespace) -> int:
    devices = list_devices()
    if args.json:
        print(json.dumps([d.to_dict() for d in devices], indent=2))
        return 0
    header = f"{'name':<22}{'core':<15}{'clock MHz':>10}{'flash KiB':>11}{'SRAM KiB':>10}  description"
    print(header)
    print("-" * len(header))
    for d in devices:
        print(
            f"{d.name:<22}{d.core:<15}{d.clock_hz / 1e6:>10.0f}{_kib(d.flash_bytes):>11}"
            f"{_kib(d.sram_bytes):>10}  {d.display_name}"
        )
    return 0


def _format_report(r: CostReport) -> str:
    lines = [
        f"network {r.network!r} on {r.device} (runtime {r.runtime})",
        "",
        f"{'layer':<24}{'op':<18}{'out shape':<16}{'params':>9}{'MACs':>12}{'model KiB':>10}{'out KiB':>9}{'ms':>9}",
    ]
    for layer in r.layers:
        shape = "x".join(str(d) for d in layer.output_shape)
        name = layer.name + (f" (+{', '.join(layer.fused)})" if layer.fused else "")
        lines.append(
            f"{name[:23]:<24}{layer.op:<18}{shape:<16}{layer.nonzero_params:>9}{layer.macs:>12}"
            f"{_kib(layer.model_bytes):>10}{_kib(layer.output_bytes):>9}{layer.latency_ms:>9.3f}"
        )
    flash_pct = 100 * r.flash_bytes / r.device_flash_bytes
    sram_pct = 100 * r.sram_bytes / r.device_sram_bytes
    lines += [
        "",
        f"params          {r.params} ({r.nonzero_params} non-zero)",
        f"MACs            {r.macs}",
        f"flash           {_kib(r.flash_bytes)} KiB of {_kib(r.device_flash_bytes)} ({flash_pct:.1f}%)"
        f"  = model {_kib(r.model_bytes)} + runtime code {_kib(r.runtime_code_bytes)}",
        f"SRAM            {_kib(r.sram_bytes)} KiB of {_kib(r.device_sram_bytes)} ({sram_pct:.1f}%)"
        f"  = arena {_kib(r.arena_bytes)} + persistent {_kib(r.persistent_bytes)}"
        f" + firmware {_kib(r.sram_overhead_bytes)}",
        f"working memory  {_kib(r.working_memory_bytes)} KiB (SpArSe WM); live-bytes lower bound"
        f" {_kib(r.peak_live_bytes)} KiB",
        f"latency         {r.latency_ms:.2f} ms   energy {r.energy_mj:.3f} mJ",
        f"fits            flash: {'yes' if r.fits_flash else 'NO'}   SRAM: {'yes' if r.fits_sram else 'NO'}",
    ]
    return "\n".join(lines)


def _cmd_cost(args: argparse.Namespace) -> int:
    path = Path(args.network)
    try:
        text = path.read_text()
    except OSError as exc:
        raise HardwareModelError(f"cannot read network file {str(path)!r}: {exc.strerror}") from exc
    network = NetworkSpec.from_json(text)
    device: DeviceSpec = load_device(args.device_file) if args.device_file else get_device(args.device)
    report = estimate(network, device, args.runtime)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(_format_report(report))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from sparse_nas.datasets import available_datasets, dataset_info, download_dataset

    data_dir = Path(args.data_dir) if args.data_dir else get_settings().data_dir
    if args.action == "download":
        if not args.name:
            raise SparseNASError("datasets download: name the dataset, one of " + ", ".join(available_datasets()))
        paths = download_dataset(args.name, data_dir)
        print(f"{args.name}: {len(paths)} file(s) verified in {data_dir}")
        return 0
    for name in available_datasets():
        info = dataset_info(name)
        shape = "x".join(str(d) for d in info.input_shape)
        where = "bundled" if not info.needs_data_dir else str(data_dir)
        print(f"{name:<15}{shape:<12}{info.num_classes:>4} classes  {where:<20} {info.description}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sparse_nas.search import SearchEngine, spec_digest
    from sparse_nas.spec import SearchJobSpec

    try:
        spec = SearchJobSpec.from_file(args.spec)
    except ValidationError as exc:
        print(f"sparse-nas: error: {args.spec} is not a valid job spec:", file=sys.stderr)
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(spec)"
            print(f"  {where}: {error['msg']}", file=sys.stderr)
        return 2
    settings = get_settings()
    study_name = args.study or spec.name or f"job-{spec_digest(spec)}"
    progress = _Progress(spec.n_trials, enabled=not args.quiet)
    engine = SearchEngine(
        spec,
        storage_url=args.storage or settings.resolved_database_url(),
        study_name=study_name,
        artifact_dir=args.artifacts or settings.resolved_artifact_dir(),
        data_dir=args.data_dir or settings.data_dir,
        on_trial=progress.update,
    )
    try:
        results = engine.run()
    finally:
        progress.close()
    counts = ", ".join(f"{n} {status}" for status, n in results.counts.items() if n)
    print(f"study {study_name!r}: {counts}; hypervolume {results.hypervolume:.4f} (normalised to the budgets)")
    print(results.format_table())
    if args.json:
        Path(args.json).write_text(json.dumps(results.to_dict(), indent=2))
        print(f"results written to {args.json}")
    return 0


class _Progress:
    """A tqdm bar over the job's trials (stderr), or nothing when quiet."""

    def __init__(self, total: int, *, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True)
        self._best: float | None = None

    def update(self, record: TrialRecord) -> None:
        if self._bar is None:
            return
        if record.accuracy is not None and record.status == "complete" and record.feasible:
            self._best = max(self._best or 0.0, record.accuracy)
        best = f"{100 * self._best:.1f}%" if self._best is not None else "-"
        self._bar.set_postfix_str(f"last #{record.number} {record.status}, best acc {best}")
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse-nas", description="Hardware-aware NAS for microcontrollers.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("devices", help="list the MCU device catalogue")
    p.add_argument("--json", action="store_true", help="print the device files as JSON")
    p.set_defaults(func=_cmd_devices)
    p = sub.add_parser("cost", help="predict the cost of a network (JSON IR, see docs/ir.md)")
    p.add_argument("network", help="path to a network JSON file")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--device", help="catalogue device name (see `sparse-nas devices`)")
    group.add_argument("--device-file", help="a custom device JSON file (see docs/devices.md)")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="tflm", help="runtime profile (default tflm)")
    p.add_argument("--json", action="store_true", help="print the full CostReport as JSON")
    p.set_defaults(func=_cmd_cost)
    p = sub.add_parser("datasets", help="list datasets or download one (with checksums)")
    p.add_argument("action", choices=("list", "download"), nargs="?", default="list")
    p.add_argument("name", nargs="?", help="dataset to download")
    p.add_argument("--data-dir", help="data directory (default: $SPARSE_NAS_DATA_DIR or ./data)")
    p.set_defaults(func=_cmd_datasets)
    p = sub.add_parser("search", help="run (or resume) a search job locally and print its Pareto front")
    p.add_argument("spec", help="job spec file, .yaml or .json (see docs/job_spec.md)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study database (default: SQLite in $SPARSE_NAS_STATE_DIR)")
    p.add_argument("--study", help="study name; running the same name again resumes it (default: the spec's name)")
    p.add_argument("--artifacts", help="directory for trained weights (default: $SPARSE_NAS_STATE_DIR/artifacts)")
    p.add_argument("--data-dir", help="data directory (default: $SPARSE_NAS_DATA_DIR or ./data)")
    p.add_argument("--json", help="also write the results (front, hypervolume, trials) to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (HardwareModelError, SparseNASError) as exc:
        print(f"sparse-nas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
