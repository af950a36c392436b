"""Search strategies, every one an Optuna sampler writing to the job's study.

``mobo`` is ours (:class:`~sparse_nas.strategies.mobo.MoboSampler`: a GP on accuracy,
exact hardware costs, qLogNEHVI over a screened feasible pool). ``gp``, ``nsga2``,
``tpe`` and ``random`` are Optuna's samplers, as baselines and alternatives; all of them
read the budgets from the constraints stored with each trial (``trial.set_constraint``).
``dnas`` is not a sampler (:mod:`sparse_nas.strategies.dnas` trains a supernet and the
engine tells its derived architectures); ``hybrid`` runs it first and continues with
``mobo``, whose initial design the DNAS trials then seed (they count toward it).
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna

from search_spaces.families import BaseSearchSpace
from sparse_nas.errors import SparseNASError
from sparse_nas.spec import STRATEGIES, SearchJobSpec

SAMPLER_STRATEGIES = ("mobo", "gp", "nsga2", "tpe", "random")
"""Strategies that are Optuna samplers (``dnas`` trains a supernet instead)."""

MIN_NSGA2_POPULATION = 4


class StrategyError(SparseNASError, ValueError):
    """A strategy that cannot run this job."""


def make_sampler(
    spec: SearchJobSpec, space: BaseSearchSpace, reference_point: Mapping[str, float], *, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``spec.strategy``, seeded with ``seed`` (default ``spec.seed``).

    ``spec.initial_trials`` is the space-filling start of every strategy that has one:
    Sobol points for ``mobo`` (and ``hybrid``, where the complete DNAS trials count
    toward it), random start-up trials for ``gp`` and ``tpe``, and the first
    generation's size for ``nsga2``.
    """
    strategy = spec.strategy
    seed = spec.seed if seed is None else seed
    if strategy in ("mobo", "hybrid"):
        from sparse_nas.strategies.mobo import MoboSampler

        return MoboSampler(
            space,
            spec.device_spec(),
            spec.runtime,
            spec.objectives,
            spec.limits(),
            reference_point,
            seed=seed,
            n_initial=spec.initial_trials,
        )
    if strategy == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.initial_trials)
    if strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(MIN_NSGA2_POPULATION, spec.initial_trials))
    if strategy == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=spec.initial_trials, multivariate=True, constant_liar=True
        )
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise StrategyError(
        f"strategy: {strategy!r} is not an Optuna sampler strategy; the search engine runs "
        f"{', '.join(SAMPLER_STRATEGIES)} (all strategies: {', '.join(STRATEGIES)})"
    )
