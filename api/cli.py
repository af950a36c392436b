"""The `sparse-nas` command line.

Subcommands:
    devices                      the device catalogue
    cost NET.json --device NAME  predicted flash / SRAM / MACs / latency of a network
    datasets [list|download]     the datasets and their files
    search SPEC.yaml             run (or resume) a search job here; prints the Pareto front
    serve                        the REST API plus one job worker (the embedded default)
    quickstart SPEC.yaml         serve, run the job, print its front; the service stays up
    worker                       a job worker on the service database
    submit SPEC.yaml             submit a job to a running service (--wait follows it to its end)
    jobs                         list the service's jobs
    export JOB TRIAL --format F  a trained trial as a zipped bundle (pytorch, onnx, onnx-int8, tflite) with its manifest
    finalize JOB TRIAL           retrain a trial on train + validation for more epochs, store it (then export)
Sizes are printed in KiB (the edge of the system); JSON output keeps bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from api.client import ServiceClient, read_spec_document
from api.console import job_summary, kib, trial_line
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
    from api.db import Job
    from sparse_nas.export import TrialSource, WeightsChoice
    from sparse_nas.search import TrialRecord


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
            f"{d.name:<22}{d.core:<15}{d.clock_hz / 1e6:>10.0f}{kib(d.flash_bytes):>11}"
            f"{kib(d.sram_bytes):>10}  {d.display_name}"
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
            f"{kib(layer.model_bytes):>10}{kib(layer.output_bytes):>9}{layer.latency_ms:>9.3f}"
        )
    flash_pct = 100 * r.flash_bytes / r.device_flash_bytes
    sram_pct = 100 * r.sram_bytes / r.device_sram_bytes
    lines += [
        "",
        f"params          {r.params} ({r.nonzero_params} non-zero)",
        f"MACs            {r.macs}",
        f"flash           {kib(r.flash_bytes)} KiB of {kib(r.device_flash_bytes)} ({flash_pct:.1f}%)"
        f"  = model {kib(r.model_bytes)} + runtime code {kib(r.runtime_code_bytes)}",
        f"SRAM            {kib(r.sram_bytes)} KiB of {kib(r.device_sram_bytes)} ({sram_pct:.1f}%)"
        f"  = arena {kib(r.arena_bytes)} + persistent {kib(r.persistent_bytes)}"
        f" + firmware {kib(r.sram_overhead_bytes)}",
        f"working memory  {kib(r.working_memory_bytes)} KiB (SpArSe WM); live-bytes lower bound"
        f" {kib(r.peak_live_bytes)} KiB",
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


# --- the service ---------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from api.app import check_bind
    from api.serve import serve

    settings = get_settings()
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    check_bind(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(settings, with_worker=not args.no_worker)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from api.quickstart import quickstart

    settings = get_settings()
    if args.port is not None:
        settings = settings.model_copy(update={"port": args.port})
    return quickstart(settings, Path(args.spec), exit_when_done=args.exit_when_done)


def _cmd_worker(args: argparse.Namespace) -> int:
    from api.worker import main as worker_main

    argv = ["--once"] if args.once else []
    if args.worker_id:
        argv += ["--worker-id", args.worker_id]
    return worker_main(argv)


def _service_url(args: argparse.Namespace) -> str:
    """``--url``, or the settings' host and port (a wildcard host reached on loopback)."""
    if args.url:
        return args.url.rstrip("/")
    settings = get_settings()
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def _client(args: argparse.Namespace) -> ServiceClient:
    """A client of ``--url`` with ``--token`` (defaults from the settings)."""
    token = args.token if args.token is not None else get_settings().api_token
    return ServiceClient(_service_url(args), token)


def _cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    job, created = client.submit(read_spec_document(Path(args.spec)), args.idempotency_key)
    how = "submitted" if created else "already submitted with this idempotency key"
    print(f"job {job['id']} {how} ({job['status']}, {job['progress']['n_trials']} trials)")
    if not args.wait:
        return 0
    try:
        done = client.follow(job["id"], args.poll, lambda trial: print(trial_line(trial), flush=True))
    except KeyboardInterrupt:
        print(f"stopped waiting; job {job['id']} goes on (sparse-nas jobs)", file=sys.stderr)
        return 130
    print(job_summary(done))
    return 0 if done["status"] == "succeeded" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    page = _client(args).jobs(status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    header = f"{'id':<34}{'name':<22}{'status':<12}{'trials':>9}{'best acc':>10}  created (UTC)"
    print(header)
    print("-" * len(header))
    for job in page["items"]:
        progress = job["progress"]
        best = job.get("best_accuracy")
        print(
            f"{job['id']:<34}{(job.get('name') or '-')[:21]:<22}{job['status']:<12}"
            f"{progress['trials_done']:>4}/{progress['n_trials']:<4}"
            f"{(f'{100 * best:.1f}%' if best is not None else '-'):>10}  {job['created_at'][:19]}"
        )
    print(f"{len(page['items'])} of {page['total']} job(s)")
    return 0


# --- export ------------------------------------------------------------------------------


def _local_trial_source(args: argparse.Namespace) -> tuple[TrialSource, Job | None]:
    """JOB as a job of the service database (its study), else as a study name (`sparse-nas search`)."""
    from sqlalchemy import inspect

    from api import crud
    from api.db import make_engine, make_session_factory
    from api.db.models import JOBS_TABLE
    from api.errors import JobNotFoundError
    from api.service import parse_spec
    from sparse_nas.export import TrialSource

    settings = get_settings()
    url = args.storage or settings.resolved_database_url()
    job = None
    engine = make_engine(url)
    try:
        if inspect(engine).has_table(JOBS_TABLE):
            with make_session_factory(engine)() as session:
                try:
                    job = crud.get_job(session, args.job)
                except JobNotFoundError:
                    job = None
    finally:
        engine.dispose()
    source = TrialSource(
        storage_url=url,
        study_name=job.study_name if job is not None else args.job,
        artifact_dir=Path(args.artifacts) if args.artifacts else settings.resolved_artifact_dir(),
        data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir,
        spec=parse_spec(job.spec) if job is not None else None,
    )
    return source, job


def _export_to_file(args: argparse.Namespace, source: TrialSource, job: Job | None, weights: WeightsChoice) -> int:
    import shutil

    from sparse_nas.export import EXPORTS_SUBDIR, export_trial, safe_name

    result = export_trial(
        source,
        args.trial,
        args.format,
        export_dir=source.artifact_dir / EXPORTS_SUBDIR,
        weights=weights,
        job_id=job.id if job is not None else None,
    )
    kind = result.manifest["weights"]["kind"]
    default = f"{safe_name(args.job)}-trial-{args.trial}-{kind}-{args.format}.zip"
    output = Path(args.output or default)
    shutil.copyfile(result.path, output)
    check = result.manifest["check"]
    verdict = "within" if check["within_tolerance"] else "OUTSIDE"
    print(
        f"trial {args.trial} ({kind} weights) exported as {args.format} to {output}: test accuracy "
        f"{100 * check['exported_test_accuracy']:.2f}% ({check['runtime']}) vs PyTorch "
        f"{100 * check['pytorch_test_accuracy']:.2f}%, {verdict} the {check['tolerance_pp']:g} pp tolerance"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    source, job = _local_trial_source(args)
    return _export_to_file(args, source, job, args.weights)


def _cmd_finalize(args: argparse.Namespace) -> int:
    from api.db import FINISHED_STATUSES
    from api.errors import InvalidTransitionError
    from sparse_nas.export import ExportError, finalize_trial, get_format, running_trials

    if args.format is not None:
        get_format(args.format)  # before training: a typo must not cost a retraining
    source, job = _local_trial_source(args)
    if job is not None and job.status not in FINISHED_STATUSES:
        raise InvalidTransitionError(job.id, job.status, "finalize", FINISHED_STATUSES)
    busy = running_trials(source) if job is None else []
    if busy:
        raise ExportError(
            f"study {source.study_name!r} has trials {busy} running: its search may still be writing it; "
            "finalize once the search has ended (running it again recovers trials a dead search left running)"
        )
    finalized = finalize_trial(source, args.trial, epochs=args.epochs)
    print(
        f"trial {args.trial} finalized: {finalized.epochs} epochs on {finalized.train_samples} samples "
        f"(train + validation) in {finalized.train_seconds:.1f} s, test accuracy {100 * finalized.test_accuracy:.2f}%"
    )
    return _export_to_file(args, source, job, "finalized") if args.format else 0


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
    p = sub.add_parser("serve", help="serve the REST API with one in-process job worker (Ctrl-C stops)")
    p.add_argument("--host", help="interface to listen on (default: $SPARSE_NAS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default: $SPARSE_NAS_PORT or 8000)")
    p.add_argument("--no-worker", action="store_true", help="API only; run workers with `sparse-nas worker`")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser(
        "quickstart", help="start the service, run a job on it, print its Pareto front and dashboard (Ctrl-C stops)"
    )
    p.add_argument("spec", help="job spec file, .yaml or .json (e.g. examples/quickstart.yaml)")
    p.add_argument("--port", type=int, help="TCP port (default: $SPARSE_NAS_PORT or 8000; another if taken)")
    p.add_argument("--exit-when-done", action="store_true", help="stop the service once the job has ended")
    p.set_defaults(func=_cmd_quickstart)
    p = sub.add_parser("worker", help="run search jobs from the service database (settings: SPARSE_NAS_*)")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--worker-id", help="this worker's name in the jobs table (default: host-pid-random)")
    p.set_defaults(func=_cmd_worker)
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="the service (default: http://$SPARSE_NAS_HOST:$SPARSE_NAS_PORT)")
    client.add_argument("--token", help="bearer token (default: $SPARSE_NAS_API_TOKEN)")
    p = sub.add_parser("submit", parents=[client], help="submit a job spec to a running service")
    p.add_argument("spec", help="job spec file, .yaml or .json (see docs/job_spec.md)")
    p.add_argument("--idempotency-key", help="retrying with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="print trials as they finish until the job ends")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls with --wait (default 1)")
    p.set_defaults(func=_cmd_submit)
    p = sub.add_parser("jobs", parents=[client], help="list the jobs of a running service")
    p.add_argument(
        "--status", choices=("queued", "running", "cancelling", "cancelled", "succeeded", "failed"), help="filter"
    )
    p.add_argument("--limit", type=int, default=50, help="jobs to show, newest first (1-500, default 50)")
    p.add_argument("--json", action="store_true", help="print the page as JSON")
    p.set_defaults(func=_cmd_jobs)
    local = argparse.ArgumentParser(add_help=False)
    local.add_argument("job", help="a job id of the service database, or the study name of `sparse-nas search`")
    local.add_argument("trial", type=int, help="the trial's number")
    local.add_argument("--storage", help="SQLAlchemy URL of the database (default: SQLite in $SPARSE_NAS_STATE_DIR)")
    local.add_argument("--artifacts", help="the job's artifact directory (default: $SPARSE_NAS_STATE_DIR/artifacts)")
    local.add_argument("--data-dir", help="data directory (default: $SPARSE_NAS_DATA_DIR or ./data)")
    local.add_argument("-o", "--output", help="zip file to write (default: ./<job>-trial-<n>-<weights>-<format>.zip)")
    # Formats and weights are checked by sparse_nas.export (listing the valid values): importing
    # it here would make every subcommand pay for torch.
    formats = "pytorch, onnx, onnx-int8 or tflite"
    p = sub.add_parser("export", parents=[local], help="export a trained trial: model files + manifest.json, zipped")
    p.add_argument("--format", required=True, help=f"bundle format: {formats}")
    p.add_argument("--weights", default="auto", help="auto (finalized if present, else search), search or finalized")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("finalize", parents=[local], help="retrain a trial on train + validation, store it, export")
    p.add_argument("--epochs", type=int, help="training epochs (default: twice the job's)")
    p.add_argument("--format", help=f"then export the finalized weights: {formats}")
    p.set_defaults(func=_cmd_finalize)
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
