"""The search driver: one job's loop of ask, cost, train, tell, over one Optuna study.

The driver is the only process that writes the job's study. For each new trial it asks
the strategy's sampler for a point, costs it exactly with hw_models and stores the
costs (user attributes) and the budgets (constraints). A point that breaks a budget is
told at once as ``infeasible`` and never trained; a feasible one goes to the executor
(in-process or Ray). When a trial finishes, its weights become an artifact of the trial
and only then is the trial told, so a COMPLETE trial always has its weights. With an
executor that trains in other processes (Ray), the driver asks and costs the next trial
while the running ones train, and hands it to the executor before it stores the finished ones, so its
own work overlaps training instead of adding to it; a prepared trial that a stop keeps
from starting is recorded ``interrupted`` and its point enqueued again. For the
``dnas`` and ``hybrid`` strategies the loop is preceded by a differentiable search whose
derived architectures go through the same costing, training and telling
(:mod:`sparse_nas.search.dnas_driver`).

A job survives its driver dying: run the same job (same study) again and
:meth:`SearchEngine.run` marks the trials left running ``interrupted`` (FAIL), enqueues
their parameters again, keeps every finished trial and runs until ``n_trials`` trials
count (:data:`~sparse_nas.search.records.COUNTED_STATUSES`). Only one driver may run a
given study at a time (the service's job queue guarantees it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from sparse_nas.datasets import DatasetSplits, load_dataset
from sparse_nas.search import early_stopping
from sparse_nas.search.costs import constraint_values, cost_point, infeasible_reason
from sparse_nas.search.executors import BaseExecutor, InProcessExecutor, RayExecutor
from sparse_nas.search.records import (
    ARTIFACT_ATTR,
    CARRIED_ATTRS,
    DRIVER_SECONDS_ATTR,
    INFEASIBLE_ACCURACY,
    LOST_COUNT_ATTR,
    MAX_LOST_RETRIES,
    REASON_ATTR,
    RETRY_OF_ATTR,
    SPEC_ATTR,
    STATUS_ATTR,
    SUGGEST_SECONDS_ATTR,
    TrialRecord,
    counts_toward_budget,
    objective_values,
    to_record,
)
from sparse_nas.search.results import SearchResults, reference_point
from sparse_nas.search.storage import StorageError, artifact_store, open_storage, save_weights, set_trial_attrs
from sparse_nas.search.trial_runner import TrialOutcome, TrialTask, make_task
from sparse_nas.spec import DNAS_STRATEGIES, SearchJobSpec
from sparse_nas.strategies import make_sampler

logger = logging.getLogger(__name__)

RESUMABLE_FIELDS = frozenset({"n_trials", "execution"})
"""Spec fields a resumed job may change: a bigger budget, other workers."""

TrialCallback = Callable[[TrialRecord], None]


class JobMismatchError(StorageError):
    """The study in the database was created by a different job spec."""


class SearchEngine:
    """Runs one :class:`SearchJobSpec` into one Optuna study.

    Args:
        spec: The validated job.
        storage_url: SQLAlchemy URL of the study database.
        study_name: The study of this job (a job id in the service).
        artifact_dir: Where the trials' weights are stored.
        data_dir: Where datasets are read from (not needed for ``digits``).
        on_trial: Called in the driver after every trial is told (progress bars, logs).
        should_stop: Polled before each new trial is launched; once it returns True no
            trial is launched, the trials in flight finish and are told, and
            :meth:`run` returns with :attr:`stopped` set (a cancelled job; running it
            again resumes it).
    """

    def __init__(
        self,
        spec: SearchJobSpec,
        *,
        storage_url: str,
        study_name: str,
        artifact_dir: str | os.PathLike[str],
        data_dir: str | os.PathLike[str] | None = None,
        on_trial: TrialCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.spec = spec
        self.storage_url = storage_url
        self.study_name = study_name
        self.artifact_dir = Path(artifact_dir)
        self.data_dir = data_dir
        self.on_trial = on_trial
        self.should_stop = should_stop
        self.stopped = False
        self.space = spec.build_search_space()
        self.device = spec.device_spec()
        self.limits = spec.limits()
        self.reference = reference_point(spec)

    # --- the study ---------------------------------------------------------------------

    def open_study(self) -> optuna.Study:
        """Create the job's study, or load it and check that it belongs to this job."""
        storage = open_storage(self.storage_url)
        study = optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            directions=self.spec.directions(),
            sampler=self.make_sampler(self.spec.seed),
            load_if_exists=True,
        )
        existing = len(study.get_trials(deepcopy=False))
        if existing:
            # A resumed sampler seeded as at the start would replay the points it already
            # gave (Optuna's baselines keep their RNG in memory): seed it from the history.
            study.sampler = self.make_sampler(resume_seed(self.spec.seed, existing))
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            study.set_user_attr(SPEC_ATTR, self.spec.to_dict())
        else:
            given = self.spec.to_dict()
            changed = sorted(
                key
                for key in set(stored) | set(given)
                if key not in RESUMABLE_FIELDS and stored.get(key) != given.get(key)
            )
            if changed:
                raise JobMismatchError(
                    f"study {self.study_name!r} holds a different job: fields {changed} differ from the spec given; "
                    f"only {sorted(RESUMABLE_FIELDS)} may change on resume (or use another study name)"
                )
        return study

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """The strategy's sampler; ``dnas`` asks it only for re-enqueued points (its own are derived)."""
        if self.spec.strategy == "dnas":
            return optuna.samplers.RandomSampler(seed=seed)
        return make_sampler(self.spec, self.space, self.reference, seed=seed)

    def recover(self, study: optuna.Study) -> list[int]:
        """Fail the trials a dead driver left running and enqueue their points again.

        Returns:
            The numbers of the interrupted trials.
        """
        interrupted = []
        storage = study._storage
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(trial._trial_id, STATUS_ATTR, "interrupted")
            storage.set_trial_user_attr(
                trial._trial_id, REASON_ATTR, "the search driver stopped before this trial finished"
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            interrupted.append(trial.number)
            if set(trial.params) == set(self.space.distributions()):
                carried = {key: trial.user_attrs[key] for key in CARRIED_ATTRS if key in trial.user_attrs}
                study.enqueue_trial(
                    trial.params, user_attrs={RETRY_OF_ATTR: trial.number, **carried}, skip_if_exists=False
                )
        if interrupted:
            logger.warning("study %s: trials %s were interrupted and are run again", self.study_name, interrupted)
        return interrupted

    # --- the loop -------------------------------------------------------------------

    def run(self, executor: BaseExecutor | None = None) -> SearchResults:
        """Run (or resume) the job to ``n_trials`` counted trials; return its results."""
        study = self.open_study()
        self.recover(study)
        done = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
        if done < self.spec.n_trials:
            splits = load_dataset(self.spec.dataset_config(), self.data_dir)
            owned = executor is None
            executor = executor or self.make_executor(splits)
            try:
                if self.spec.strategy in DNAS_STRATEGIES:
                    from sparse_nas.search.dnas_driver import DnasPhase

                    done = DnasPhase(self).run(study, executor, splits, done)
                self._loop(study, executor, done)
            finally:
                if owned:
                    executor.close()
        return SearchResults.from_study(study, self.spec)

    def make_executor(self, splits: DatasetSplits) -> BaseExecutor:
        """The executor the spec asks for."""
        execution = self.spec.execution
        if execution.backend == "ray":
            return RayExecutor(
                self.space,
                splits,
                concurrency=execution.concurrency,
                cpus_per_trial=execution.cpus_per_trial,
                address=execution.ray_address,
            )
        return InProcessExecutor(self.space, splits)

    def _loop(self, study: optuna.Study, executor: BaseExecutor, done: int) -> None:
        store = artifact_store(self.artifact_dir)
        in_flight: dict[int, Trial] = {}
        # Asked and costed ahead, not started yet: with an executor that trains in other
        # processes the driver prepares the next trial while the running ones train, and
        # submits it before it stores the finished ones (the driver's work overlaps training).
        ready: list[tuple[Trial, TrialTask]] = []
        try:
            while True:
                done = self._launch(study, executor, in_flight, ready, done, ask=True)
                if not in_flight:
                    return
                if executor.runs_in_background and not ready:
                    done = self._prepare(study, in_flight, ready, done)
                finished = [(in_flight.pop(outcome.number), outcome) for outcome in executor.wait()]
                done = self._launch(study, executor, in_flight, ready, done, ask=False)
                for trial, outcome in finished:
                    done += self._finish(study, store, trial, outcome)
        finally:
            for trial, _ in ready:
                self._release(study, trial)

    def _may_launch(self, done: int, queued: int) -> bool:
        """Whether another trial may start: the job is not stopping and the budget has room."""
        if self.stopped or done + queued >= self.spec.n_trials:
            return False
        if self.should_stop is not None and self.should_stop():
            self.stopped = True
            return False
        return True

    def _launch(
        self,
        study: optuna.Study,
        executor: BaseExecutor,
        in_flight: dict[int, Trial],
        ready: list[tuple[Trial, TrialTask]],
        done: int,
        *,
        ask: bool,
    ) -> int:
        """Fill the executor's free slots: prepared trials first, then (if ``ask``) new ones."""
        while executor.in_flight < executor.capacity:
            if ready:
                if self.stopped or (self.should_stop is not None and self.should_stop()):
                    self.stopped = True
                    break
                trial, task = ready.pop(0)
            elif ask and self._may_launch(done, len(in_flight)):
                done, prepared = self._ask_feasible(study, done, len(in_flight))
                if prepared is None:
                    continue
                trial, task = prepared
            else:
                break
            executor.submit(task)
            in_flight[trial.number] = trial
        return done

    def _prepare(
        self, study: optuna.Study, in_flight: dict[int, Trial], ready: list[tuple[Trial, TrialTask]], done: int
    ) -> int:
        """Ask and cost one trial ahead while the trials in flight train."""
        while not ready and self._may_launch(done, len(in_flight)):
            done, prepared = self._ask_feasible(study, done, len(in_flight))
            if prepared is not None:
                ready.append(prepared)
        return done

    def _ask_feasible(
        self, study: optuna.Study, done: int, queued: int
    ) -> tuple[int, tuple[Trial, TrialTask] | None]:
        """Ask one trial: a feasible one with its training task, or None after telling it infeasible."""
        trial, params, costs = self._ask(study)
        reason = self.space.invalid_reason(params) or infeasible_reason(costs, self.limits)
        if reason is not None:
            trial.set_user_attr(STATUS_ATTR, "infeasible")
            trial.set_user_attr(REASON_ATTR, reason)
            self._tell(study, trial, values=objective_values(self.spec.objectives, INFEASIBLE_ACCURACY, costs))
            return done + 1, None
        return done, (trial, self.task(study, trial, params))

    def _release(self, study: optuna.Study, trial: Trial) -> None:
        """A prepared trial that never started: fail it as interrupted and enqueue its point again."""
        trial.set_user_attr(STATUS_ATTR, "interrupted")
        trial.set_user_attr(REASON_ATTR, "prepared ahead, but the job stopped before it started")
        carried = {key: trial.user_attrs[key] for key in CARRIED_ATTRS if key in trial.user_attrs}
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number, **carried}, skip_if_exists=False)
        self._tell(study, trial, state=TrialState.FAIL)

    def _ask(self, study: optuna.Study) -> tuple[Trial, dict[str, Any], dict[str, float]]:
        start = time.perf_counter()
        trial = study.ask()
        params = self.space.sample(trial)
        sampled = time.perf_counter()
        costs = self.cost(params)
        timings = {SUGGEST_SECONDS_ATTR: sampled - start, DRIVER_SECONDS_ATTR: time.perf_counter() - start}
        self.store_costs(trial, costs, timings)
        return trial, params, costs

    def cost(self, params: dict[str, Any]) -> dict[str, float]:
        """A point's exact hardware costs on the job's device and runtime."""
        return cost_point(self.space, params, self.device, self.spec.runtime)

    def store_costs(self, trial: Trial, costs: Mapping[str, float], attrs: Mapping[str, Any]) -> None:
        """Store a trial's costs (user attributes), limits (constraints) and ``attrs`` in one transaction."""
        set_trial_attrs(trial, {**costs, **attrs}, constraint_values(costs, self.limits))

    def task(self, study: optuna.Study, trial: Trial, params: dict[str, Any]) -> TrialTask:
        """The training task of a feasible trial, at the job's fidelity."""
        return make_task(
            trial.number,
            params,
            self.spec.training.train_config(seed=self.spec.seed),
            self.spec.seed,
            stop_below=self._stop_below(study),
            threads=self.spec.execution.cpus_per_trial,
            device=self.device,
            runtime=self.spec.runtime,
        )

    def _stop_below(self, study: optuna.Study) -> dict[int, float]:
        training = self.spec.training
        if not training.early_stopping:
            return {}
        rungs = early_stopping.rung_epochs(training.min_epochs, training.epochs)
        histories = [
            [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.intermediate_values
        ]
        return early_stopping.stop_below(histories, rungs)

    def finish(self, study: optuna.Study, store: Any, trial: Trial, outcome: TrialOutcome) -> bool:
        """Store a trained trial's measurements and weights, then tell it.

        Returns:
            Whether the trial counts toward ``n_trials`` (False: its worker was lost and
            its point was enqueued to run again).
        """
        return self._finish(study, store, trial, outcome)

    def tell(
        self, study: optuna.Study, trial: Trial, *, values: list[float] | None = None, state: TrialState | None = None
    ) -> None:
        """Tell a trial and report it to ``on_trial``."""
        self._tell(study, trial, values=values, state=state)

    def _finish(self, study: optuna.Study, store: Any, trial: Trial, outcome: TrialOutcome) -> bool:
        if outcome.status == "lost":
            return self._lost(study, trial, outcome)
        storage = study._storage
        measured = {
            "val_accuracy": outcome.val_accuracy,
            "test_accuracy": outcome.test_accuracy,
            "train_seconds": outcome.train_seconds,
            "epochs_completed": len(outcome.epoch_accuracies),
            "nonzero_params": outcome.nonzero_params,
            "worker_seconds": outcome.worker_seconds,
            "worker_pid": outcome.worker_pid or None,
            "worker_started_at": outcome.worker_started_at or None,
        }
        attrs = {key: value for key, value in measured.items() if value is not None}
        attrs[STATUS_ATTR] = outcome.status
        if outcome.reason is not None:
            attrs[REASON_ATTR] = outcome.reason
        if outcome.weights is not None:
            attrs[ARTIFACT_ATTR] = save_weights(store, storage, trial, outcome.weights)
        set_trial_attrs(trial, attrs, intermediate_values=dict(enumerate(outcome.epoch_accuracies, start=1)))
        if outcome.status == "complete":
            costs = {metric: trial.user_attrs[metric] for metric in self.spec.objectives if metric != "accuracy"}
            self._tell(study, trial, values=objective_values(self.spec.objectives, outcome.val_accuracy, costs))
        elif outcome.status == "stopped":
            self._tell(study, trial, state=TrialState.PRUNED)
        else:
            logger.warning("trial %d failed: %s", trial.number, outcome.reason)
            self._tell(study, trial, state=TrialState.FAIL)
        return True

    def _lost(self, study: optuna.Study, trial: Trial, outcome: TrialOutcome) -> bool:
        """A trial whose worker died: run its point again, unless it keeps killing workers."""
        lost_count = int(trial.user_attrs.get(LOST_COUNT_ATTR, 0)) + 1
        if lost_count >= MAX_LOST_RETRIES:
            trial.set_user_attr(STATUS_ATTR, "failed")
            trial.set_user_attr(REASON_ATTR, f"{outcome.reason} ({lost_count} times in a row for this point)")
            logger.warning("trial %d failed: its worker was lost %d times in a row", trial.number, lost_count)
            self._tell(study, trial, state=TrialState.FAIL)
            return True
        trial.set_user_attr(STATUS_ATTR, "interrupted")
        trial.set_user_attr(REASON_ATTR, outcome.reason)
        carried = {key: trial.user_attrs[key] for key in CARRIED_ATTRS if key in trial.user_attrs}
        study.enqueue_trial(
            trial.params,
            user_attrs={RETRY_OF_ATTR: trial.number, LOST_COUNT_ATTR: lost_count, **carried},
            skip_if_exists=False,
        )
        logger.warning("trial %d interrupted (%s); its point runs again", trial.number, outcome.reason)
        self._tell(study, trial, state=TrialState.FAIL)
        return False

    def _tell(
        self,
        study: optuna.Study,
        trial: Trial,
        *,
        values: list[float] | None = None,
        state: TrialState | None = None,
    ) -> None:
        frozen = study.tell(trial, values=values, state=state)
        if self.on_trial is not None:
            self.on_trial(to_record(frozen))


def resume_seed(job_seed: int, trials_so_far: int) -> int:
    """The sampler seed of a job resumed with ``trials_so_far`` trials in its study."""
    return (job_seed + 1_000_003 * trials_so_far) % 2**31


def run_search(
    spec: SearchJobSpec,
    *,
    storage_url: str,
    study_name: str,
    artifact_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    on_trial: TrialCallback | None = None,
) -> SearchResults:
    """Run or resume ``spec`` into ``study_name`` at ``storage_url``; see :class:`SearchEngine`."""
    engine = SearchEngine(
        spec,
        storage_url=storage_url,
        study_name=study_name,
        artifact_dir=artifact_dir,
        data_dir=data_dir,
        on_trial=on_trial,
    )
    return engine.run()


def spec_digest(spec: SearchJobSpec) -> str:
    """A short stable name for a job's study: the hash of its spec minus resumable fields."""
    import hashlib

    # A field added later and left unset is left out, so that older specs keep their digest.
    body = {k: v for k, v in spec.to_dict().items() if k not in RESUMABLE_FIELDS and not (k == "dnas" and v is None)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
