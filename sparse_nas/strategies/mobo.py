"""``mobo``: multi-objective Bayesian optimisation of accuracy and exact hardware costs.

SpArSe (Fedorov et al. 2019, "SpArSe: Sparse Architecture Search for CNNs on
Resource-Constrained Microcontrollers", arXiv 1905.12107) searches MCU networks by
multi-objective Bayesian optimisation of accuracy and memory. This sampler keeps that
scheme and makes it practical with one observation: the hardware costs of a point are
known exactly before training (hw_models), so only validation accuracy is uncertain
and only accuracy is modelled.

For each new trial:

1. **Initial phase** (space-filling). While the study has fewer than ``n_initial``
   trials that are complete, running or waiting (the trial being sampled excluded;
   stopped, failed and infeasible trials do not count), or fewer than
   :data:`MIN_OBSERVATIONS` complete trials, the suggestion is the first point of a
   scrambled Sobol sequence (seeded) that is feasible and not yet in the study. Sobol
   coordinates map onto the distributions by bins for integers and categoricals and in
   log space for log-scaled numbers
   (:class:`~sparse_nas.strategies._encoding.ParamEncoding`).
2. **Model.** A botorch ``SingleTaskGP`` (float64, standardised outcome, RBF-ARD
   kernel with the dimension-scaled priors of Hvarfner et al. 2024, "Vanilla Bayesian
   Optimization Performs Great in High Dimensions", arXiv 2402.02229) of the complete
   trials' accuracies over the parameters encoded in ``[0, 1]^d`` (numbers normalised,
   log where log; categoricals one-hot, one 0/1 feature for two choices) and the
   network's exact log flash and log MACs (:data:`CAPACITY_METRICS`, scaled to the
   pool's range): with dozens of parameter features and few observations, these tell
   the GP which networks are large, the strongest predictor of accuracy. Its
   hyper-parameters are stored with each trial (:data:`GP_STATE_ATTR`) and the next
   fit warm-starts from the latest stored ones, so a fit is a few L-BFGS-B iterations
   and still a function of the study alone.
3. **Acquisition: noisy expected hypervolume improvement** (NEHVI, Daulton et al.
   2021, "Parallel Bayesian Optimization of Multiple Noisy Objectives with Expected
   Hypervolume Improvement", arXiv 2105.08195), for one point at a time, of accuracy
   and the cost objectives normalised by the reference point. As in NEHVI, the
   accuracies of the complete trials (the baseline) and of the running and waiting
   trials (pending points) are sampled jointly with the candidate's from the GP
   posterior (quasi-MC, seeded), and the candidate scores its hypervolume improvement
   over each sample's Pareto front, averaged. Pending points are thereby part of every
   sampled front, which makes parallel workers' suggestions batch-aware. Because the
   costs are exact, the improvement is computed exactly on one grid of the cost space
   cut at the front points' costs, shared by all samples (in each grid cell the front
   is a single accuracy height), instead of botorch's box decomposition per MC sample:
   botorch's ``qLogNoisyExpectedHypervolumeImprovement`` (Ament et al. 2023,
   "Unexpected Improvements to Expected Improvement for Bayesian Optimization",
   arXiv 2310.20708) spent 2 s per suggestion on those decompositions alone (three
   objectives, 200 trials, 64 samples, baseline pruned to 24 points; 2-core build
   machine), where this whole step takes about 0.1 s; the tests check that the two
   agree. The log-smoothing of qLogNEHVI serves gradient-based optimisation; here
   candidates are enumerated, and ties (no sampled improvement) are broken by the
   optimistic improvement, then the optimistic accuracy.
4. **Candidates.** The space is mixed and mostly discrete, so the acquisition is
   maximised over a discrete set: ``pool_size`` uniformly random feasible points
   (screened once per sampler and cached: costing is the expensive part for some
   families) plus ``n_neighbours`` one- or two-parameter mutations of the
   Pareto-optimal complete trials, screened feasible, minus every parameter set
   already in the study (any state; only if none is left is one repeated). The
   ``n_scored`` candidates of highest optimistic improvement (accuracy at the
   posterior mean + :data:`UCB_BETA` standard deviations, over the front of posterior
   means) are scored by NEHVI; the argmax is suggested.

Every suggestion is feasible (screened with :func:`~sparse_nas.search.costs.cost_points`
and :func:`~sparse_nas.search.costs.feasible_mask`). Suggestions are deterministic: a
function of the seed, the trial number and the study (random draws are seeded locally
from ``(seed, trial.number)``; torch runs on one thread while suggesting, so results do
not depend on the caller's thread count), also in a fresh process. The sampler
pickles; its caches are rebuilt after unpickling. If the GP fit or the acquisition
fails numerically, the next Sobol point is suggested and a warning is logged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hw_models import DeviceSpec
from search_spaces.families import BaseSearchSpace
from sparse_nas.errors import SparseNASError
from sparse_nas.search.records import trial_status
from sparse_nas.spec import ACCURACY, COST_OBJECTIVES
from sparse_nas.strategies._encoding import ParamEncoding, ParamKey
from sparse_nas.strategies._pool import Screen, ScreenedPoints, SobolStream, mutations, random_pool

if TYPE_CHECKING:
    import torch
    from botorch.models import SingleTaskGP

logger = logging.getLogger(__name__)

MIN_OBSERVATIONS = 2
"""Complete trials the GP needs before the BO phase can start."""

GP_STATE_ATTR = "mobo:gp_hyperparameters"
"""Trial system attribute: the GP hyper-parameters fitted for that trial's suggestion (JSON)."""

COLD_FIT_ITERATIONS = 200
"""L-BFGS-B iterations of a GP fit from the priors' modes (no stored hyper-parameters)."""

WARM_FIT_ITERATIONS = 25
"""L-BFGS-B iterations of a fit warm-started from the latest stored hyper-parameters.

Each suggestion continues the previous optimisation with the new observations: the
marginal likelihood is flat along the many irrelevant length scales of an ARD kernel,
and a fit from scratch at 200 observations takes about 300 iterations (3 s).
"""

UCB_BETA = 2.0
"""Optimism of the shortlist score: accuracy at the posterior mean + UCB_BETA x std."""

SURE_BETA = 3.0
"""A front point whose accuracy is below another's by this many stds, at no lower cost, is dropped."""

MAX_GRID_CELLS = 20_000
"""Bound on the cost-space grid: it limits the NEHVI front to the likeliest Pareto-optimal points."""

CHUNK_ELEMENTS = 2_000_000

CAPACITY_METRICS = ("flash_bytes", "macs")
"""Exact costs given to the GP as inputs too (log-scaled): a network's size and work predict its accuracy."""
"""Elements of the improvement's intermediate tensors (samples x grid cells x points), per chunk of points."""


class MoboConfigError(SparseNASError, ValueError):
    """A bad argument of :class:`MoboSampler`; the message names it."""


class NoFeasibleCandidateError(SparseNASError, RuntimeError):
    """No screened point of the search space meets the limits."""


@dataclass
class _History:
    """What the sampler reads from the study for one suggestion."""

    observed: list[dict[str, Any]]
    accuracy: list[float]
    observed_costs: list[list[float] | None]
    """Cost objectives from the trials' user attributes; None where one is missing."""
    pending: list[dict[str, Any]]
    pending_costs: list[list[float] | None]
    exclude: set[ParamKey]
    gp_state: dict[str, Any] | None
    """GP hyper-parameters stored by the latest trial that has them (the fit's warm start)."""


@dataclass(frozen=True)
class _Candidates:
    params: list[dict[str, Any]]
    costs: np.ndarray
    encoded: np.ndarray


class MoboSampler(optuna.samplers.BaseSampler):
    """SpArSe-style MOBO over a search space with exact hardware costs (see the module docstring).

    Deterministic for a seed and a study (also in a fresh process), picklable, and
    safe to share between threads (suggestions are serialised). Writes one system
    attribute per suggested trial (:data:`GP_STATE_ATTR`).

    Args:
        space: The job's search space (its ``distributions()`` are the relative search space).
        device: Target device, or its catalogue name.
        runtime: Deployment runtime profile name (``"tflm"`` or ``"ideal"``).
        objectives: ``"accuracy"`` first (maximised), then 1-3 distinct cost metrics of
            ``flash_bytes``, ``sram_bytes``, ``macs``, ``latency_ms`` (minimised); the
            study's directions must match.
        limits: Largest allowed value per cost metric (bytes, milliseconds); a point is
            feasible when every cost is at most its limit.
        reference_point: Hypervolume reference, one value per objective: a low accuracy
            and an upper bound (> 0) per cost; costs are normalised by it.
        seed: Seeds the Sobol sequence, the pool, the mutations and the MC samples.
        n_initial: Trials of the space-filling Sobol start.
        pool_size: Random feasible points screened once and reused as candidates.
        n_neighbours: Mutations of the Pareto-optimal trials added to each suggestion's candidates.
        n_scored: Candidates of highest optimistic improvement scored by NEHVI.
        mc_samples: Quasi-MC samples of NEHVI.
        max_screened: Most random (and Sobol) points costed when looking for feasible
            ones; defaults to 8 x ``pool_size``.

    Raises:
        MoboConfigError: On a bad argument.
    """

    def __init__(
        self,
        space: BaseSearchSpace,
        device: DeviceSpec | str,
        runtime: str,
        objectives: Sequence[str],
        limits: Mapping[str, float],
        reference_point: Mapping[str, float],
        *,
        seed: int = 0,
        n_initial: int = 10,
        pool_size: int = 2048,
        n_neighbours: int = 32,
        n_scored: int = 256,
        mc_samples: int = 128,
        max_screened: int | None = None,
    ):
        objectives = tuple(objectives)
        _check_objectives(objectives)
        for metric, limit in limits.items():
            if metric not in COST_OBJECTIVES or not limit > 0:
                raise MoboConfigError(f"limits.{metric}: expected a positive limit on one of {list(COST_OBJECTIVES)}")
        missing = [name for name in objectives if name not in reference_point]
        if missing:
            raise MoboConfigError(f"reference_point: no value for objective(s) {missing}")
        for name in objectives[1:]:
            if not reference_point[name] > 0:
                raise MoboConfigError(f"reference_point.{name}: expected a positive cost, got {reference_point[name]}")
        counts = {"n_initial": n_initial, "pool_size": pool_size, "n_scored": n_scored, "mc_samples": mc_samples}
        if max_screened is not None:
            counts["max_screened"] = max_screened
        for name, value in {**counts, "n_neighbours": n_neighbours + 1}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MoboConfigError(f"{name}: expected a positive integer, got {value!r}")
        self.space = space
        self.device = device
        self.runtime = runtime
        self.objectives = objectives
        self.cost_objectives = objectives[1:]
        self.limits = {metric: float(limit) for metric, limit in limits.items()}
        self.reference_point = {name: float(reference_point[name]) for name in objectives}
        self.seed = int(seed)
        self.n_initial = n_initial
        self.pool_size = pool_size
        self.n_neighbours = n_neighbours
        self.n_scored = n_scored
        self.mc_samples = mc_samples
        self.max_screened = 8 * pool_size if max_screened is None else max_screened
        self._random_sampler = optuna.samplers.RandomSampler(seed=self.seed)
        self._init_caches()

    def _init_caches(self) -> None:
        self._lock = threading.Lock()
        self._distributions = self.space.distributions()
        self._encoding = ParamEncoding(self._distributions)
        # Objective costs first, then the capacity features the GP reads besides the parameters.
        self._metrics = self.cost_objectives + tuple(m for m in CAPACITY_METRICS if m not in self.cost_objectives)
        self._screen = Screen(self.space, self._encoding, self.device, self.runtime, self.limits, self._metrics)
        self._sobol = SobolStream(self._encoding.n_unit, self.seed, self.max_screened)
        self._pool: ScreenedPoints | None = None
        self._pool_encoded: np.ndarray | None = None
        self._log_range: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Caches are a function of the arguments: rebuilt on demand after unpickling.
        state = self.__dict__.copy()
        for name in (
            "_lock", "_distributions", "_encoding", "_metrics", "_screen", "_sobol", "_pool", "_pool_encoded",
            "_log_range",
        ):  # fmt: skip
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_caches()

    # --- the BaseSampler interface -----------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """A value for every parameter: a Sobol point or the NEHVI argmax (see the module docstring).

        A trial enqueued with every parameter fixed gets no suggestion. One enqueued with
        only some fixed keeps them and takes the rest from the suggestion; that mix is
        not screened.
        """
        fixed = trial.system_attrs.get("fixed_params", {})
        if not search_space or all(name in fixed for name in self._encoding.free):
            return {}
        with self._lock:
            params = self._suggest(study, trial)
        return {name: value for name, value in params.items() if name in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._random_sampler.reseed_rng()

    # --- suggestions -------------------------------------------------------------------

    def _suggest(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        history = self._read(study, trial)
        n_observed = len(history.observed)
        if n_observed < MIN_OBSERVATIONS or n_observed + len(history.pending) < self.n_initial:
            return self._sobol_point(history.exclude)
        candidates = self._candidates(history, trial.number)
        try:
            params, gp_state = self._best_candidate(history, candidates, trial.number)
        except _numerical_errors() as exc:
            logger.warning(
                "mobo: the GP or its acquisition failed for trial %d (%s: %s); suggesting the next Sobol point",
                trial.number,
                type(exc).__name__,
                exc,
            )
            return self._sobol_point(history.exclude)
        # Stored with the trial so that the next fit warm-starts from it, in this process
        # or any other that reads the study (Optuna's GA samplers keep state the same way).
        study._storage.set_trial_system_attr(trial._trial_id, GP_STATE_ATTR, gp_state)
        return params

    def _read(self, study: optuna.Study, trial: FrozenTrial) -> _History:
        history = _History([], [], [], [], [], set(), None)
        gp_state_number = -1
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            if GP_STATE_ATTR in other.system_attrs and other.number > gp_state_number:
                gp_state_number = other.number
                history.gp_state = other.system_attrs[GP_STATE_ATTR]
            params = other.params
            if other.state == TrialState.WAITING:
                params = {**other.system_attrs.get("fixed_params", {}), **params}
            if not self._encoding.has_all(params):
                continue
            history.exclude.add(self._encoding.key(params))
            status = trial_status(other)
            attrs = other.user_attrs
            costs = [float(attrs[m]) for m in self._metrics] if set(self._metrics) <= set(attrs) else None
            if status == "complete" and other.values is not None and np.isfinite(other.values[0]):
                history.observed.append(params)
                history.accuracy.append(float(other.values[0]))
                history.observed_costs.append(costs)
            elif status in ("running", "waiting"):
                history.pending.append(params)
                history.pending_costs.append(costs)
        return history

    def _sobol_point(self, exclude: set[ParamKey]) -> dict[str, Any]:
        point = self._sobol.first_new(self._screen, exclude)
        if point is not None:
            return point
        # The Sobol stream found nothing new within max_screened points: use the pool.
        pool = self._candidate_pool()
        for params, key in zip(pool.params, pool.keys, strict=True):
            if key not in exclude:
                return dict(params)
        logger.warning("mobo: every feasible candidate is already in the study; repeating one")
        return dict(pool.params[0])

    def _candidate_pool(self) -> ScreenedPoints:
        if self._pool is None:
            pool = random_pool(self._screen, self.pool_size, self.seed, self.max_screened)
            if len(pool) == 0:
                # The smallest network and its categorical variations are the cheapest
                # points of the space: feasible whenever anything is.
                pool = self._screen.feasible(self.space.corner_candidates())
            if len(pool) == 0:
                raise NoFeasibleCandidateError(
                    f"no feasible point of search space {self.space.name!r} under limits {self.limits} "
                    f"on device {_device_name(self.device)!r} ({self.runtime}) among {self.max_screened} "
                    "random points and the space's smallest networks; loosen the budgets"
                )
            self._pool = pool
            self._pool_encoded = self._encoding.encode(pool.params)
            capacity = np.log(np.maximum(pool.costs[:, len(self.cost_objectives) :], 1.0))
            self._log_range = (capacity.min(axis=0), np.maximum(capacity.max(axis=0) - capacity.min(axis=0), 1e-9))
        return self._pool

    def _candidates(self, history: _History, number: int) -> _Candidates:
        """Pool and Pareto mutations, minus the study's points (the whole pool if none is new)."""
        pool = self._candidate_pool()
        rng = np.random.default_rng([self.seed, number])
        centres = [history.observed[i] for i in self._pareto_rows(history)]
        local = self._screen.feasible(mutations(self._encoding, centres, self.n_neighbours, rng))
        seen = set(history.exclude)
        rows = []
        for i, key in enumerate(pool.keys):
            if key not in seen:
                seen.add(key)
                rows.append(i)
        extra = []
        for i, key in enumerate(local.keys):
            if key not in seen:
                seen.add(key)
                extra.append(i)
        if not rows and not extra:
            logger.warning("mobo: every feasible candidate is already in the study; repeating one")
            rows = list(range(len(pool)))
        params = [pool.params[i] for i in rows] + [local.params[i] for i in extra]
        costs = np.concatenate([pool.costs[rows], local.costs[extra]])
        encoded = np.concatenate([self._pool_encoded[rows], self._encoding.encode([local.params[i] for i in extra])])
        return _Candidates(params, costs, encoded)

    def _pareto_rows(self, history: _History) -> list[int]:
        """Indices of the non-dominated complete trials (accuracy up, costs down)."""
        costs = self._costs(history.observed, history.observed_costs)[:, : len(self.cost_objectives)]
        values = np.column_stack([history.accuracy, -costs])
        better_or_equal = np.all(values[:, None, :] >= values[None, :, :], axis=-1)
        better = np.any(values[:, None, :] > values[None, :, :], axis=-1)
        dominated = np.any(better_or_equal & better, axis=0)
        return [int(i) for i in np.flatnonzero(~dominated)]

    def _costs(self, points: list[dict[str, Any]], stored: list[list[float] | None]) -> np.ndarray:
        """``len(points) x len(metrics)``: the stored costs, the missing ones costed (and stored)."""
        missing = [i for i, costs in enumerate(stored) if costs is None]
        if missing:
            computed = self._screen.costs([points[i] for i in missing])
            for row, i in enumerate(missing):
                stored[i] = [float(c) for c in computed[row]]
        return np.asarray(stored, dtype=np.float64).reshape(-1, len(self._metrics))

    def _negated_costs(self, costs: np.ndarray) -> np.ndarray:
        """Objective costs as maximised objectives normalised by the reference point (its costs become -1)."""
        n = len(self.cost_objectives)
        return -costs[:, :n] / np.asarray([self.reference_point[m] for m in self.cost_objectives])

    def _gp_inputs(self, encoded: np.ndarray, costs: np.ndarray) -> np.ndarray:
        """The encoded parameters and the log capacity features (0-1 over the pool's range).

        ``ds_cnn`` has over 30 parameter features and a few dozen observations fit them:
        alone, the GP cannot tell a large network from a small one, and NEHVI then favours
        cheap points whose improvement is certain. Flash and MACs are exact, known for
        every candidate, and the strongest predictors of accuracy, so the GP sees them.
        """
        self._candidate_pool()
        low, span = self._log_range
        capacity = (np.log(np.maximum(costs[:, len(self.cost_objectives) :], 1.0)) - low) / span
        return np.concatenate([encoded, capacity], axis=1)

    def _best_candidate(
        self, history: _History, candidates: _Candidates, number: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The candidate of highest NEHVI, and the GP hyper-parameters to store."""
        import torch

        front_x = self._encoding.encode(history.observed + history.pending)
        front_costs = np.concatenate(
            [self._costs(history.observed, history.observed_costs), self._costs(history.pending, history.pending_costs)]
        )
        seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
        # fork_rng: botorch's fit retries draw from torch's global generator; the
        # caller's state is restored afterwards.
        with _one_torch_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            front_x = self._gp_inputs(front_x, front_costs)
            train_x = _tensor(front_x[: len(history.observed)])
            gp, gp_state = _fit_gp(train_x, _tensor(np.asarray(history.accuracy)).unsqueeze(-1), history.gp_state)
            scores, optimistic_gain, optimistic = _nehvi(
                gp,
                _Points(_tensor(front_x), _tensor(self._negated_costs(front_costs))),
                _Points(
                    _tensor(self._gp_inputs(candidates.encoded, candidates.costs)),
                    _tensor(self._negated_costs(candidates.costs)),
                ),
                self.reference_point[ACCURACY],
                n_scored=self.n_scored,
                mc_samples=self.mc_samples,
                seed=seed,
            )
        ranking = (optimistic, optimistic_gain, scores)  # np.lexsort: the last key is the primary one
        if not all(np.isfinite(key).all() for key in ranking):
            raise FloatingPointError("non-finite acquisition values")
        best = int(np.lexsort(ranking)[-1])
        return dict(candidates.params[best]), gp_state


# --- model ---------------------------------------------------------------------------------


def _fit_gp(
    train_x: torch.Tensor, train_y: torch.Tensor, warm_state: Mapping[str, Any] | None
) -> tuple[SingleTaskGP, dict[str, Any]]:
    """A GP of accuracy (``n x 1``) over encoded points (``n x d``), and its hyper-parameters as JSON."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.mlls import ExactMarginalLogLikelihood

    gp = SingleTaskGP(
        train_x,
        train_y,
        covar_module=get_covar_module_with_dim_scaled_prior(ard_num_dims=train_x.shape[-1]),
        outcome_transform=Standardize(m=1),
    )
    warm = warm_state is not None and _load_hyperparameters(gp, warm_state)
    iterations = WARM_FIT_ITERATIONS if warm else COLD_FIT_ITERATIONS
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": iterations}})
    gp.eval()
    return gp, {name: p.detach().flatten().tolist() for name, p in gp.named_parameters()}


def _load_hyperparameters(gp: SingleTaskGP, state: Mapping[str, Any]) -> bool:
    """Copy stored hyper-parameters into ``gp`` if they fit it exactly (same names and sizes)."""
    import torch

    params = dict(gp.named_parameters())
    if set(params) != set(state) or any(len(state[n]) != p.numel() for n, p in params.items()):
        return False
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.as_tensor(state[name], dtype=p.dtype).view_as(p))
    return True


# --- acquisition -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Points:
    """Points in the GP's input space with their exact objectives other than accuracy."""

    x: torch.Tensor
    """``n x d`` encoded parameters."""
    z: torch.Tensor
    """``n x c`` negated costs normalised by the reference point (reference at -1)."""


def _nehvi(
    gp: SingleTaskGP,
    front: _Points,
    candidates: _Points,
    ref_accuracy: float,
    *,
    n_scored: int,
    mc_samples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NEHVI (q = 1) of the candidates given the front points (complete, then pending trials).

    Args:
        gp: The fitted accuracy model.
        front: The complete and pending trials.
        candidates: The points to score.
        ref_accuracy: The reference point's accuracy (costs' reference is -1).
        n_scored: Candidates of highest optimistic improvement that get a NEHVI.
        mc_samples: Quasi-MC samples of the joint posterior.
        seed: Seed of the quasi-MC samples.

    Returns:
        Per candidate, three ``len(candidates.x)`` arrays: NEHVI (zero outside the
        shortlist), the optimistic improvement (the shortlist score) and the optimistic
        accuracy (posterior mean + UCB_BETA x std); the last two break ties.
    """
    import torch
    from botorch.sampling.qmc import NormalQMCEngine
    from linear_operator.utils.cholesky import psd_safe_cholesky

    with torch.no_grad():
        n_front = len(front.x)
        mean, std = _marginals(gp, torch.cat([front.x, candidates.x]))
        # Drop the front points that cannot be Pareto-optimal in any plausible sample.
        keep = _possibly_pareto(mean[:n_front], std[:n_front], front.z, ref_accuracy)
        front = _Points(front.x[keep], front.z[keep])
        front_mean = mean[:n_front][keep]

        optimistic = mean[n_front:] + UCB_BETA * std[n_front:]
        on_mean_front = _pareto_probability(front_mean.unsqueeze(0), front.z, ref_accuracy) > 0
        optimistic_gain = _improvement(
            optimistic.unsqueeze(0),
            candidates.z,
            front_mean[on_mean_front].unsqueeze(0),
            front.z[on_mean_front],
            ref_accuracy,
        )[0]
        shortlist = torch.as_tensor(np.lexsort((optimistic.numpy(), optimistic_gain.numpy()))[::-1][:n_scored].copy())

        # Joint posterior of the front points and, one at a time, each shortlisted
        # candidate: f_x = mean_x + l_x . w + d_x v with the front's base samples w.
        k = len(front.x)
        joint_mean, joint_cov = _joint(gp, torch.cat([front.x, candidates.x[shortlist]]))
        if k:
            chol = psd_safe_cholesky(joint_cov[:k, :k])
            cross = torch.linalg.solve_triangular(chol, joint_cov[:k, k:], upper=False)
        else:
            chol, cross = joint_cov[:0, :0], joint_cov[:0, :]
        residual = (joint_cov.diagonal()[k:] - cross.square().sum(0)).clamp_min(0).sqrt()
        base = NormalQMCEngine(k + 1, seed=seed, inv_transform=True).draw(mc_samples, dtype=joint_cov.dtype)
        front_samples = joint_mean[:k] + base[:, :k] @ chol.T
        candidate_samples = joint_mean[k:] + base[:, :k] @ cross + base[:, k:] * residual

        # The NEHVI front: points Pareto-optimal in some sample, likeliest first, capped
        # so that the grid stays small.
        probability = _pareto_probability(front_samples, front.z, ref_accuracy)
        n_costs = front.z.shape[-1]
        cap = max(1, int(MAX_GRID_CELLS ** (1 / n_costs)) - 1)
        order = np.lexsort((-front_mean.numpy(), -probability.numpy()))
        chosen = torch.as_tensor(order[: min(cap, int((probability > 0).sum()))].copy(), dtype=torch.long)
        gains = _improvement(
            candidate_samples, candidates.z[shortlist], front_samples[:, chosen], front.z[chosen], ref_accuracy
        )
    scores = np.zeros(len(candidates.x))
    scores[shortlist.numpy()] = gains.mean(0).numpy()
    return scores, optimistic_gain.numpy(), optimistic.numpy()


def _marginals(gp: SingleTaskGP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of the latent accuracy at each row of ``x``.

    The exact GP predictive equations for the diagonal only: ``gp.posterior(x)`` builds
    the ``n x n`` covariance, 15 times slower for the pool's 2,000 points.
    """
    import torch
    from linear_operator.utils.cholesky import psd_safe_cholesky

    train_x = gp.train_inputs[0]
    kernel = gp.covar_module(train_x).to_dense()
    chol = psd_safe_cholesky(kernel + gp.likelihood.noise * torch.eye(len(train_x), dtype=kernel.dtype))
    cross = gp.covar_module(train_x, x).to_dense()
    residual = (gp.train_targets - gp.mean_module(train_x)).unsqueeze(-1)
    mean = gp.mean_module(x) + (cross.T @ torch.cholesky_solve(residual, chol)).squeeze(-1)
    variance = gp.covar_module(x, diag=True) - torch.linalg.solve_triangular(chol, cross, upper=False).square().sum(0)
    # Back from the standardised outcome.
    scale, shift = gp.outcome_transform.stdvs.reshape(()), gp.outcome_transform.means.reshape(())
    return mean * scale + shift, variance.clamp_min(0).sqrt() * scale


def _joint(gp: SingleTaskGP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    posterior = gp.posterior(x)
    return posterior.mean.reshape(-1), posterior.distribution.covariance_matrix


def _possibly_pareto(mean: torch.Tensor, std: torch.Tensor, z: torch.Tensor, ref_accuracy: float) -> torch.Tensor:
    """Indices of points not surely dominated (by SURE_BETA stds) nor surely below the reference."""
    import torch

    low, high = mean - SURE_BETA * std, mean + SURE_BETA * std
    # [i, j]: point j costs no more than point i in every cost and is surely more accurate.
    dominates = (z.unsqueeze(0) >= z.unsqueeze(1)).all(-1) & (low.unsqueeze(0) > high.unsqueeze(1))
    inside = (high > ref_accuracy) & (z > -1.0).all(-1)
    return torch.nonzero(inside & ~dominates.any(-1)).reshape(-1)


def _pareto_probability(accuracy: torch.Tensor, z: torch.Tensor, ref_accuracy: float) -> torch.Tensor:
    """Share of the samples (rows of ``accuracy``, ``s x n``) where each point is Pareto-optimal above the reference."""
    cost_geq = (z.unsqueeze(0) >= z.unsqueeze(1)).all(-1)  # [i, j]: z_j >= z_i
    cost_gt = (z.unsqueeze(0) > z.unsqueeze(1)).any(-1)
    a_i, a_j = accuracy.unsqueeze(-1), accuracy.unsqueeze(-2)
    dominated = (cost_geq & ((a_j > a_i) | ((a_j >= a_i) & cost_gt))).any(-1)
    inside = (accuracy > ref_accuracy) & (z > -1.0).all(-1)
    return (inside & ~dominated).to(accuracy.dtype).mean(0)


def _improvement(
    accuracy: torch.Tensor,
    z: torch.Tensor,
    front_accuracy: torch.Tensor,
    front_z: torch.Tensor,
    ref_accuracy: float,
) -> torch.Tensor:
    """Exact hypervolume improvement of each point over each sample's front.

    The cost space inside the reference box ``[-1, 0]^c`` is cut into a grid at the
    front points' costs. Over one grid cell the front is dominated up to one accuracy,
    its height (the best accuracy among the front points that cost no more than the
    cell's cheapest corner), so a point adds (its box's area in the cell) x (its
    accuracy above the height) per cell. Heights never increase towards cheaper cells;
    along the last cost dimension the cells a point rises above are therefore a suffix,
    found by binary search, and summed with prefix sums: the work is samples x points x
    (cells / cells along the last dimension) x log(cells along it).

    Args:
        accuracy: ``s x n`` sampled accuracies of the points.
        z: ``n x c`` their normalised negated costs.
        front_accuracy: ``s x k`` sampled accuracies of the front points (``k`` may be 0).
        front_z: ``k x c`` their normalised negated costs.
        ref_accuracy: The reference accuracy.

    Returns:
        ``s x n`` improvements.
    """
    import torch

    samples, n = accuracy.shape
    z = z.clamp(-1.0, 0.0)
    front_z = front_z.clamp(-1.0, 0.0)
    edges = [torch.unique(torch.cat([front_z[:, j], front_z.new_tensor([-1.0, 0.0])])) for j in range(z.shape[-1])]
    *outer_edges, last = edges
    heights = _front_heights(front_accuracy, front_z, edges).clamp_min(ref_accuracy)
    heights = heights.reshape(samples, -1, len(last) - 1)  # s x outer cells x last cells
    # Area of each point's box in each cell of the grid over all but the last cost.
    outer_area = z.new_ones(n, heights.shape[1])
    if outer_edges:
        lower = torch.cartesian_prod(*[e[:-1] for e in outer_edges]).reshape(-1, len(outer_edges))
        upper = torch.cartesian_prod(*[e[1:] for e in outer_edges]).reshape(-1, len(outer_edges))
        outer_area = (torch.minimum(z[:, None, :-1], upper) - lower).clamp_min(0).prod(-1)
    # Along the last cost: full cells [0, full), then a part of cell ``full`` of length ``part``.
    widths = last.diff()
    full = torch.searchsorted(last[1:], z[:, -1].contiguous(), right=True)  # n
    part = torch.where(full < len(widths), z[:, -1] - last[:-1][full.clamp_max(len(widths) - 1)], 0.0)
    prefix_width = torch.cat([widths.new_zeros(1), widths.cumsum(0)])
    prefix_volume = torch.cat([heights.new_zeros(*heights.shape[:2], 1), (heights * widths).cumsum(-1)], dim=-1)
    descending = (-heights).contiguous()
    out = accuracy.new_empty(samples, n)
    step = max(1, CHUNK_ELEMENTS // (samples * heights.shape[1]))
    for i in range(0, n, step):
        rows = slice(i, i + step)
        lifted = accuracy[:, None, rows].expand(-1, heights.shape[1], -1).contiguous()  # s x outer x chunk
        # First cell of each (sample, outer cell) whose height is below the point's accuracy.
        start = torch.searchsorted(descending, -lifted, right=True)
        end = full[rows].expand_as(start)
        start = torch.minimum(start, end)
        volume = lifted * (prefix_width[end] - prefix_width[start])
        volume -= prefix_volume.gather(-1, end) - prefix_volume.gather(-1, start)
        partial_height = heights.gather(-1, end.clamp_max(len(widths) - 1))
        volume += part[rows] * (lifted - partial_height).clamp_min(0)
        out[:, rows] = torch.einsum("son,no->sn", volume, outer_area[rows])
    return out


def _front_heights(front_accuracy: torch.Tensor, front_z: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
    """``s x cells``: per sample, each grid cell's best front accuracy at no more cost (-inf if none).

    A front point covers the cells below its costs in every dimension, so the heights
    are suffix maxima over the grid of the points' accuracies placed at their costs.
    """
    import torch

    samples = front_accuracy.shape[0]
    shape = [len(e) - 1 for e in edges]
    grid = front_accuracy.new_full((samples, *shape), -torch.inf)
    # Each front cost is one of the edges; the point covers cell indices below its edge's.
    position = torch.stack([torch.searchsorted(e, front_z[:, j].contiguous()) for j, e in enumerate(edges)], dim=-1)
    covers = (position >= 1).all(-1)
    flat = torch.zeros(int(covers.sum()), dtype=torch.long)
    for j, size in enumerate(shape):
        flat = flat * size + (position[covers, j] - 1)
    grid.view(samples, -1).scatter_reduce_(
        1, flat.expand(samples, -1), front_accuracy[:, covers], reduce="amax", include_self=True
    )
    for dim in range(1, len(shape) + 1):
        grid = grid.flip(dim).cummax(dim).values.flip(dim)
    return grid.reshape(samples, -1)


# --- helpers ---------------------------------------------------------------------------------


def _check_objectives(objectives: tuple[str, ...]) -> None:
    rule = f"'accuracy' first, then 1-3 distinct of {list(COST_OBJECTIVES)}"
    if not objectives or objectives[0] != ACCURACY:
        raise MoboConfigError(f"objectives: must start with 'accuracy'; expected {rule}, got {list(objectives)}")
    costs = objectives[1:]
    if not 1 <= len(costs) <= 3 or len(set(costs)) != len(costs) or any(c not in COST_OBJECTIVES for c in costs):
        raise MoboConfigError(f"objectives: expected {rule}, got {list(objectives)}")


def _tensor(array: np.ndarray) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float64)


def _device_name(device: DeviceSpec | str) -> str:
    return device if isinstance(device, str) else device.name


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (reductions split over threads round differently)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _numerical_errors() -> tuple[type[BaseException], ...]:
    """What a GP fit or the acquisition raises on bad numerics (the sampler then falls back to Sobol)."""
    import torch
    from botorch.exceptions.errors import BotorchError
    from linear_operator.utils.errors import NanError, NotPSDError

    return (BotorchError, NotPSDError, NanError, torch.linalg.LinAlgError, FloatingPointError)
