"""The differentiable search inside a job (strategies ``dnas`` and ``hybrid``; docs/dnas.md).

Before the engine's ask-cost-train-tell loop, :class:`DnasPhase` runs one
differentiable search (:mod:`sparse_nas.strategies.dnas`) whose penalty sweep gives
one architecture per sweep point, and makes each an ordinary trial of the job's
study: its parameters are a point of the family's space, its costs come from
:func:`~sparse_nas.search.costs.cost_point` (user attributes and constraints, as for
every trial), it is trained from scratch by the executor at the job's fidelity and told
with its weights as an artifact, by the engine's own code. So results, the API, the
dashboard and export read it like any other trial. It also carries
:data:`~sparse_nas.search.records.SOURCE_ATTR` ``"dnas"`` and the
:data:`~sparse_nas.search.records.DNAS_ATTRS`.

CPU time is accounted honestly: the sweep's first trial is created before the search,
so its duration (what ``hypervolume_history`` sums) includes the supernet's training;
every later trial is created when its architecture is derived.

``dnas`` derives ``n_trials`` architectures and the loop then only runs re-enqueued
retries; ``hybrid`` derives ``sweep_points`` of them and the loop continues with
``mobo``, whose initial design counts the complete DNAS trials. Resuming a job searches
again (seeded: the same members) and trains only the sweep points no trial holds yet.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import Trial, TrialState

from hw_models import NetworkSpec
from sparse_nas.search.costs import infeasible_reason
from sparse_nas.search.records import (
    COUNTED_STATUSES,
    DNAS_INDEX_ATTR,
    DNAS_PENALTY_ATTR,
    DNAS_SEARCH_SECONDS_ATTR,
    DNAS_SOURCE,
    DRIVER_SECONDS_ATTR,
    INFEASIBLE_ACCURACY,
    REASON_ATTR,
    SOURCE_ATTR,
    STATUS_ATTR,
    SUGGEST_SECONDS_ATTR,
    objective_values,
    trial_status,
)
from sparse_nas.search.storage import artifact_store
from sparse_nas.strategies.dnas import (
    DerivationError,
    Deriver,
    SearchCancelled,
    SearchConfig,
    SupernetCostModel,
    make_plan,
    penalty_sweep,
    search,
)

if TYPE_CHECKING:
    from sparse_nas.datasets import DatasetSplits
    from sparse_nas.search.engine import SearchEngine
    from sparse_nas.search.executors import BaseExecutor
    from sparse_nas.spec import DnasSpec

logger = logging.getLogger(__name__)


def search_config(settings: DnasSpec) -> SearchConfig:
    """The search settings of a job's ``dnas`` section."""
    return SearchConfig(
        warmup_epochs=settings.warmup_epochs,
        search_epochs=settings.search_epochs,
        arch_lr=settings.arch_lr,
        temperature_start=settings.temperature[0],
        temperature_end=settings.temperature[1],
        budget_margin=settings.budget_margin,
        constraint_weight=settings.constraint_weight,
    )


class DnasPhase:
    """Runs a job's differentiable search and trains its architectures as trials (see the module docstring)."""

    def __init__(self, engine: SearchEngine):
        self.engine = engine
        self.spec = engine.spec
        self.settings = engine.spec.dnas_settings()

    def pending(self, study: optuna.Study, done: int) -> list[int]:
        """Sweep points no trial holds yet, as many as the trial budget leaves room for."""
        claimed, waiting = set(), 0
        for trial in study.get_trials(deepcopy=False):
            status = trial_status(trial)
            waiting += status == "waiting"
            if DNAS_INDEX_ATTR in trial.user_attrs and (status in COUNTED_STATUSES or status == "waiting"):
                claimed.add(int(trial.user_attrs[DNAS_INDEX_ATTR]))
        room = max(self.spec.n_trials - done - waiting, 0)
        return [k for k in range(self.spec.dnas_sweep_points()) if k not in claimed][:room]

    def run(self, study: optuna.Study, executor: BaseExecutor, splits: DatasetSplits, done: int) -> int:
        """Search, then train and tell each pending sweep point's architecture; returns the trials done."""
        import torch

        engine = self.engine
        pending = self.pending(study, done)
        if not pending or self._stop():
            return done
        penalties = penalty_sweep(*self.settings.penalty_range, self.spec.dnas_sweep_points())
        plan = make_plan(engine.space, self.settings.compression_choices())
        cost_model = SupernetCostModel(plan, engine.device, self.spec.runtime)
        deriver = Deriver(plan, engine.device, self.spec.runtime, engine.limits)
        first = self._new_trial(study)
        first.set_user_attr(SOURCE_ATTR, DNAS_SOURCE)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.spec.execution.cpus_per_trial)
        try:
            report = search(
                plan,
                cost_model,
                splits,
                penalties=penalties,
                objectives=self.spec.objectives[1:],
                reference=engine.reference,
                limits=engine.limits,
                config=search_config(self.settings),
                train_config=self.spec.training.train_config(seed=self.spec.seed),
                seed=self.spec.seed,
                should_stop=engine.should_stop,
            )
        except SearchCancelled as exc:
            first.set_user_attr(STATUS_ATTR, "interrupted")
            first.set_user_attr(REASON_ATTR, f"the job was stopped during the differentiable search ({exc})")
            engine.tell(study, first, state=TrialState.FAIL)
            engine.stopped = True
            return done
        finally:
            torch.set_num_threads(threads)
        logger.info("dnas: searched %d sweep points in %.1f s", len(penalties), report.search_seconds)
        store = artifact_store(engine.artifact_dir)
        exclude = self._known_networks(study)
        in_flight: dict[int, Trial] = {}
        for position, k in enumerate(pending):
            # A trial is created only when a slot is free: its duration, which the
            # hypervolume history sums as CPU time, must not include the training of the
            # trials before it.
            while executor.in_flight >= executor.capacity:
                done += self._collect(study, store, executor, in_flight)
            if position and self._stop():
                break
            trial = first if position == 0 else self._new_trial(study)
            started = time.perf_counter()
            member = report.members[k]
            trial.set_user_attr(SOURCE_ATTR, DNAS_SOURCE)
            trial.set_user_attr(DNAS_PENALTY_ATTR, member.penalty)
            trial.set_user_attr(DNAS_INDEX_ATTR, k)
            searched = report.search_seconds if position == 0 else 0.0
            if position == 0:
                trial.set_user_attr(DNAS_SEARCH_SECONDS_ATTR, report.search_seconds)
            try:
                derivation = deriver.derive(member.logits, exclude)
            except DerivationError as exc:
                trial.set_user_attr(STATUS_ATTR, "failed")
                trial.set_user_attr(REASON_ATTR, f"no architecture derived: {exc}")
                engine.tell(study, trial, state=TrialState.FAIL)
                done += 1
                continue
            exclude.add(derivation.network)
            trial = self._set_params(study, trial, derivation.params)
            derived = time.perf_counter()
            costs = engine.cost(derivation.params)
            timings = {
                SUGGEST_SECONDS_ATTR: searched + derived - started,
                DRIVER_SECONDS_ATTR: searched + time.perf_counter() - started,
            }
            engine.store_costs(trial, costs, timings)
            reason = infeasible_reason(costs, engine.limits)
            if reason is not None:  # derivation checks the limits; this guards a changed cost model
                trial.set_user_attr(STATUS_ATTR, "infeasible")
                trial.set_user_attr(REASON_ATTR, reason)
                engine.tell(study, trial, values=objective_values(self.spec.objectives, INFEASIBLE_ACCURACY, costs))
                done += 1
                continue
            executor.submit(engine.task(study, trial, derivation.params))
            in_flight[trial.number] = trial
        while in_flight:
            done += self._collect(study, store, executor, in_flight)
        return done

    def _stop(self) -> bool:
        should_stop = self.engine.should_stop
        if should_stop is not None and should_stop():
            self.engine.stopped = True
        return self.engine.stopped

    def _collect(self, study: optuna.Study, store: Any, executor: BaseExecutor, in_flight: dict[int, Trial]) -> int:
        # A trial whose worker was lost does not count: its point is enqueued again and
        # the engine's loop runs it after the sweep.
        return sum(
            self.engine.finish(study, store, in_flight.pop(outcome.number), outcome) for outcome in executor.wait()
        )

    @staticmethod
    def _new_trial(study: optuna.Study) -> Trial:
        # Not study.ask(): that would take a waiting (re-enqueued) trial, which the
        # engine's loop runs with its own parameters.
        return optuna.Trial(study, study._storage.create_new_trial(study._study_id))

    def _set_params(self, study: optuna.Study, trial: Trial, params: dict[str, Any]) -> Trial:
        """Store the derived parameters as the trial's, as a sampler's suggestions are stored."""
        for name, distribution in self.engine.space.distributions().items():
            study._storage.set_trial_param(
                trial._trial_id, name, distribution.to_internal_repr(params[name]), distribution
            )
        return optuna.Trial(study, trial._trial_id)

    def _known_networks(self, study: optuna.Study) -> set[NetworkSpec]:
        """The networks of every point in the study (a waiting trial's fixed parameters included)."""
        space = self.engine.space
        names = set(space.distributions())
        networks = set()
        for trial in study.get_trials(deepcopy=False):
            params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
            if set(params) == names:
                networks.add(space.to_network(params))
        return networks
