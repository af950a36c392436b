"""Where trials run: in the driver process, or as Ray tasks.

Both executors take :class:`~sparse_nas.search.trial_runner.TrialTask` objects and hand
back :class:`~sparse_nas.search.trial_runner.TrialOutcome` objects; neither touches the
database (the driver does). The search space and the dataset are shipped once: the
in-process executor keeps them, the Ray executor puts them in the object store and
passes references, so a worker process deserialises them once per task, not per epoch.

Why Ray tasks and not Ray Tune: the driver already owns the loop (ask a point, cost it,
launch it, tell the result) and must be the only database writer; Tune would add a
trial actor per trial, its own experiment directory and result pipeline, and its Optuna
bridge passes no constraints. A Ray task per trial with ``num_cpus = cpus_per_trial``
gives the same placement and parallelism; ``bench/overhead.py`` measures what is left.
"""

from __future__ import annotations

import abc
import os
import tempfile
from typing import Any

from search_spaces.families import BaseSearchSpace
from sparse_nas.datasets import DatasetSplits
from sparse_nas.errors import SparseNASError
from sparse_nas.search.trial_runner import TrialOutcome, TrialTask, run_trial

OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Object store of a private local Ray: the dataset and a few weights, not a RAM grab."""


class ExecutorError(SparseNASError, RuntimeError):
    """The executor could not start or lost its workers."""


class BaseExecutor(abc.ABC):
    """Runs up to ``capacity`` trials at once."""

    capacity: int
    runs_in_background: bool = False
    """Trials train outside the driver's thread while it waits (the driver may prepare the next one)."""

    @abc.abstractmethod
    def submit(self, task: TrialTask) -> None:
        """Start a trial; at most ``capacity`` may be in flight."""

    @abc.abstractmethod
    def wait(self) -> list[TrialOutcome]:
        """Block until at least one trial in flight has finished; return the finished ones."""

    @property
    @abc.abstractmethod
    def in_flight(self) -> int:
        """Trials submitted and not yet returned by :meth:`wait`."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release workers; in-flight trials are abandoned."""

    def __enter__(self) -> BaseExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessExecutor(BaseExecutor):
    """One trial at a time, in the calling process (tests and tiny jobs)."""

    capacity = 1

    def __init__(self, space: BaseSearchSpace, splits: DatasetSplits):
        self._space = space
        self._splits = splits
        self._pending: list[TrialTask] = []

    def submit(self, task: TrialTask) -> None:
        if self._pending:
            raise ExecutorError("the in-process executor runs one trial at a time")
        self._pending.append(task)

    def wait(self) -> list[TrialOutcome]:
        if not self._pending:
            raise ExecutorError("wait() with no trial in flight")
        task = self._pending.pop()
        return [run_trial(task, self._space, self._splits)]

    @property
    def in_flight(self) -> int:
        return len(self._pending)


def _run_on_ray(task: TrialTask, space: BaseSearchSpace, splits: DatasetSplits) -> TrialOutcome:
    # Object-store arguments arrive already resolved; the worker's torch threads are
    # pinned in run_trial to the CPUs Ray reserved for the task.
    return run_trial(task, space, splits)


class RayExecutor(BaseExecutor):
    """Trials as Ray tasks, ``cpus_per_trial`` CPUs each, ``concurrency`` at once.

    With ``address=None`` a private local Ray is started (dashboard off, object store
    capped at :data:`OBJECT_STORE_BYTES`, its own temp dir) and shut down on close;
    otherwise the executor connects to the cluster at ``address`` and leaves it running.
    """

    def __init__(
        self,
        space: BaseSearchSpace,
        splits: DatasetSplits,
        *,
        concurrency: int,
        cpus_per_trial: int,
        address: str | None = None,
    ):
        import ray

        self._ray = ray
        self.capacity = concurrency
        self._owns_ray = False
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        if not ray.is_initialized():
            try:
                if address is None:
                    # A short path: Ray's socket paths must fit in 107 bytes.
                    self._temp_dir = tempfile.TemporaryDirectory(
                        prefix="snray-", dir="/tmp", ignore_cleanup_errors=True
                    )
                    ray.init(
                        num_cpus=max(os.cpu_count() or 1, concurrency * cpus_per_trial),
                        object_store_memory=OBJECT_STORE_BYTES,
                        include_dashboard=False,
                        _temp_dir=self._temp_dir.name,
                        log_to_driver=False,
                        configure_logging=False,
                    )
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as exc:
                where = "a local Ray" if address is None else f"the Ray cluster at {address!r}"
                raise ExecutorError(f"could not start {where}: {type(exc).__name__}: {exc}") from exc
            self._owns_ray = True
        cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
        if cluster_cpus < cpus_per_trial:
            raise ExecutorError(
                f"execution.cpus_per_trial is {cpus_per_trial} but the Ray cluster has {cluster_cpus} CPUs"
            )
        self._remote = ray.remote(num_cpus=cpus_per_trial, max_retries=0)(_run_on_ray)
        self.runs_in_background = True
        self._space_ref = ray.put(space)
        self._splits_ref = ray.put(splits)
        self._futures: dict[Any, TrialTask] = {}

    def submit(self, task: TrialTask) -> None:
        if len(self._futures) >= self.capacity:
            raise ExecutorError(f"{self.capacity} trials already in flight")
        future = self._remote.remote(task, self._space_ref, self._splits_ref)
        self._futures[future] = task

    def wait(self) -> list[TrialOutcome]:
        if not self._futures:
            raise ExecutorError("wait() with no trial in flight")
        done, _ = self._ray.wait(list(self._futures), num_returns=1)
        # Collect everything that finished meanwhile too, without blocking.
        more, _ = (
            self._ray.wait([f for f in self._futures if f not in done], num_returns=len(self._futures) - 1, timeout=0)
            if len(self._futures) > 1
            else ([], [])
        )
        outcomes = []
        for future in [*done, *more]:
            task = self._futures.pop(future)
            try:
                outcomes.append(self._ray.get(future))
            except Exception as exc:  # the worker process or its node died (OOM, killed, node lost)
                outcomes.append(
                    TrialOutcome(
                        number=task.number, status="lost", reason=f"Ray worker lost: {type(exc).__name__}: {exc}"
                    )
                )
        return outcomes

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def close(self) -> None:
        for future in self._futures:
            self._ray.cancel(future, force=True)
        self._futures.clear()
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None
