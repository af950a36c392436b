"""The job worker: claims queued jobs and runs each with the search engine, to its end.

``python -m api.worker`` runs one worker; run as many as there are machines (or cores)
for jobs, each job being one search driver. A worker:

1. migrates the service tables at start (:func:`api.db.upgrade`);
2. claims the oldest queued job, or takes over one whose worker stopped sending
   heartbeats (:func:`api.crud.claim_next_job`); its search engine then resumes the
   job's study, keeping every finished trial;
3. runs it with :class:`~sparse_nas.search.SearchEngine`, stamping the job's heartbeat
   from a thread every ``heartbeat_interval_s``, recording progress after each trial and
   checking before each new trial whether the job is being cancelled (a cancel is thus
   honoured within one trial) or was taken over by another worker (then it stops and
   leaves the job alone);
4. finishes the job as ``succeeded``, ``cancelled``, or ``failed`` with
   ``"<ExceptionType>: <message>"`` as its error (the traceback goes to the log).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from api import crud
from api.db import CANCELLED, CANCELLING, FAILED, RUNNING, SUCCEEDED, Job, make_engine, make_session_factory, upgrade
from api.errors import InvalidTransitionError
from api.settings import Settings, get_settings

if TYPE_CHECKING:
    from sparse_nas.search import TrialRecord
    from sparse_nas.spec import SearchJobSpec

logger = logging.getLogger(__name__)


def default_worker_id() -> str:
    """``<hostname>-<pid>-<random>``: unique across machines, processes and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class JobWorker:
    """Claims jobs from the service database and runs them, one at a time.

    Args:
        settings: Database URL, artifact and data directories, heartbeat, staleness
            and polling intervals.
        worker_id: This worker's name in the jobs table; default :func:`default_worker_id`.
    """

    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.shutdown = threading.Event()
        """Set to stop: the running job is handed back to the queue after its current
        trial (:func:`api.crud.release_job`), and no new job is claimed."""
        self.database_url = settings.resolved_database_url()
        upgrade(self.database_url)
        self.engine = make_engine(self.database_url)
        self.sessions = make_session_factory(self.engine)

    def run_once(self) -> str | None:
        """Claim one job and run it to its end; returns its id, or None when there was none."""
        with self.sessions() as session:
            job = crud.claim_next_job(session, self.worker_id, stale_after_s=self.settings.stale_after_s)
        if job is None:
            return None
        logger.info("worker %s: running job %s (%s, status %s)", self.worker_id, job.id, job.name, job.status)
        self._run(job)
        return job.id

    def run_forever(self) -> None:
        """Run jobs until :attr:`shutdown` is set, looking for one every ``worker_poll_s`` when idle."""
        stop = self.shutdown
        while not stop.is_set():
            try:
                ran = self.run_once()
            except Exception:
                # The database went away, most likely: keep polling; a job left running
                # is taken over (here or elsewhere) once its heartbeat is stale.
                logger.exception("worker %s: claiming or finishing a job failed", self.worker_id)
                ran = None
            if ran is None:
                stop.wait(self.settings.worker_poll_s)

    def close(self) -> None:
        """Release the worker's database connections."""
        self.engine.dispose()

    # --- one job -------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        watch = _JobWatch(self.sessions, job.id, self.worker_id, job.status, self.shutdown)
        beating = threading.Thread(
            target=watch.beat_until_stopped,
            args=(self.settings.heartbeat_interval_s,),
            name=f"heartbeat-{job.id}",
            daemon=True,
        )
        beating.start()
        try:
            status, error = self._execute(job, watch)
        finally:
            watch.stop()
            beating.join()
        if watch.lost:
            logger.warning("worker %s: job %s was taken over by another worker; leaving it", self.worker_id, job.id)
            return
        with self.sessions() as session:
            # Stopped by our own shutdown, not by a cancel: queue it for the next worker.
            shut_down = status == CANCELLED and watch.status == RUNNING and self.shutdown.is_set()
            if shut_down and crud.release_job(session, job.id, self.worker_id):
                logger.info("worker %s: shutting down; job %s is queued again", self.worker_id, job.id)
                return
            try:
                crud.finish_job(session, job.id, self.worker_id, status, error)
            except InvalidTransitionError as exc:
                logger.warning("worker %s: job %s not finished: %s", self.worker_id, job.id, exc)
                return
        logger.info("worker %s: job %s %s", self.worker_id, job.id, status)

    def _execute(self, job: Job, watch: _JobWatch) -> tuple[str, str | None]:
        """Run the job's search; returns the status to finish it with and its error."""
        if job.status == CANCELLING:
            # Taken over from a dead worker after a cancel was asked for: honour it.
            return CANCELLED, None
        try:
            from sparse_nas.search import SearchEngine
            from sparse_nas.spec import SearchJobSpec

            spec = with_default_ray_address(SearchJobSpec.model_validate(job.spec), self.settings.ray_address)
            progress = _Progress(self.sessions, job.id, self.worker_id)
            progress.load(self.database_url, job.study_name)
            engine = SearchEngine(
                spec,
                storage_url=self.database_url,
                study_name=job.study_name,
                artifact_dir=self.settings.resolved_artifact_dir(),
                data_dir=self.settings.data_dir,
                on_trial=progress.on_trial,
                should_stop=watch.should_stop,
            )
            engine.run()
        except Exception as exc:
            logger.exception("worker %s: job %s failed", self.worker_id, job.id)
            return FAILED, f"{type(exc).__name__}: {exc}"
        if engine.stopped:
            return CANCELLED, None
        return SUCCEEDED, None


def with_default_ray_address(spec: SearchJobSpec, ray_address: str | None) -> SearchJobSpec:
    """``spec`` with the service's Ray cluster filled in when it runs on Ray and names none.

    The stored spec keeps ``ray_address: null`` (the job's own choice is "wherever the
    service runs Ray"); the engine accepts a changed ``execution`` on resume.
    """
    execution = spec.execution
    if ray_address is None or execution.backend != "ray" or execution.ray_address is not None:
        return spec
    return spec.model_copy(update={"execution": execution.model_copy(update={"ray_address": ray_address})})


class _JobWatch:
    """The worker's view of its job's status, refreshed by each heartbeat (None: taken over)."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, worker_id: str, status: str, shutdown: threading.Event
    ):
        self.sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self.status: str | None = status
        self.shutdown = shutdown
        self._stopped = threading.Event()

    @property
    def lost(self) -> bool:
        """Whether another worker took the job over."""
        return self.status is None

    def beat(self) -> str | None:
        """Stamp the heartbeat and learn the job's status."""
        with self.sessions() as session:
            self.status = crud.heartbeat(session, self.job_id, self.worker_id)
        return self.status

    def beat_until_stopped(self, interval_s: float) -> None:
        """The heartbeat thread: beat every ``interval_s`` until stopped or taken over."""
        while not self._stopped.wait(interval_s):
            try:
                if self.beat() is None:
                    return
            except Exception:
                logger.exception("job %s: heartbeat failed; trying again in %.1f s", self.job_id, interval_s)

    def should_stop(self) -> bool:
        """Asked by the engine before each new trial: stop once cancelling, taken over or shutting down."""
        try:
            self.beat()
        except Exception:
            logger.exception("job %s: status check failed; going on with the last known status", self.job_id)
        return self.status != RUNNING or self.shutdown.is_set()

    def stop(self) -> None:
        self._stopped.set()


class _Progress:
    """Trials counted toward the job's budget and the best feasible accuracy, kept in the row."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, worker_id: str):
        self.sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self.trials_done = 0
        self.best_accuracy: float | None = None

    def load(self, database_url: str, study_name: str) -> None:
        """Start from the trials already in the study (a resumed or taken-over job)."""
        from sparse_nas.search import open_storage, to_records

        storage = open_storage(database_url)
        try:
            trials = storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False)
        except KeyError:
            return
        finally:
            storage.engine.dispose()
        for record in to_records(trials):
            self.add(record)

    def add(self, record: TrialRecord) -> None:
        from sparse_nas.search.records import COUNTED_STATUSES

        if record.status in COUNTED_STATUSES:
            self.trials_done += 1
        accuracy = record.accuracy
        if record.status == "complete" and record.feasible and accuracy is not None:
            self.best_accuracy = accuracy if self.best_accuracy is None else max(self.best_accuracy, accuracy)

    def on_trial(self, record: TrialRecord) -> None:
        """The engine's callback after each trial is told."""
        self.add(record)
        try:
            with self.sessions() as session:
                crud.update_progress(
                    session,
                    self.job_id,
                    self.worker_id,
                    trials_done=self.trials_done,
                    best_accuracy=self.best_accuracy,
                )
        except Exception:
            # Progress is for people watching; the study holds the truth, so go on.
            logger.exception("job %s: recording progress failed", self.job_id)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m api.worker [--once] [--worker-id ID] [--nice N] [--parent-pid PID]``: run one job worker.

    SIGTERM or SIGINT stops it gracefully: the trial in flight finishes and is stored,
    and the job goes back to the queue for the next worker (a second signal kills).
    """
    parser = argparse.ArgumentParser(
        prog="python -m api.worker",
        description="Run sparse-nas search jobs from the service database (settings: SPARSE_NAS_* variables).",
    )
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    parser.add_argument("--worker-id", help="this worker's name in the jobs table (default: host-pid-random)")
    parser.add_argument(
        "--nice", type=int, default=0, help="lower this process's CPU priority by N (so an API beside it stays quick)"
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="stop (as on SIGTERM) when this process, our parent, dies (Linux; used by sparse-nas serve)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.nice:
        os.nice(args.nice)
    worker = JobWorker(get_settings(), worker_id=args.worker_id)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # A graceful stop: the current trial finishes and is stored, the job goes back to
        # the queue. A second signal kills at once (the job is then taken over when stale).
        name = signal.strsignal(signum)
        logger.info("worker %s: %s received; stopping after the current trial", worker.worker_id, name)
        worker.shutdown.set()
        signal.signal(signum, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    if args.parent_pid is not None:
        _signal_on_parent_death(args.parent_pid, signal.SIGTERM)
    try:
        if args.once:
            worker.run_once()
        else:
            worker.run_forever()
    finally:
        worker.close()
    return 0


def _signal_on_parent_death(parent_pid: int, signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signum, 0, 0, 0) != 0:
        logger.warning("cannot ask to be signalled when the parent dies: errno %d", ctypes.get_errno())
    elif os.getppid() != parent_pid:
        # The parent died before prctl took effect.
        os.kill(os.getpid(), signum)


if __name__ == "__main__":
    sys.exit(main())
