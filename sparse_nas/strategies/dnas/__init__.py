"""``dnas``: differentiable architecture search, MicroNets-style, whose architectures are trained and told to the study.

Banbury et al., "MicroNets: Neural Network Architectures for Deploying TinyML
Applications on Commodity Microcontrollers", arXiv 2010.11267: a supernet of decision
nodes, Gumbel-softmax gates, differentiable flash, SRAM and ops penalties. One module
per responsibility:

* :mod:`.plan`: a family's decision nodes, fixed skeleton and op terms; choices -> params.
* :mod:`.costs`: expected hw_models costs of node distributions (exact on one-hot choices).
* :mod:`.supernet`: the torch supernet and the architecture parameters.
* :mod:`.search`: warm-up, alternating weight/architecture steps, the penalty sweep.
* :mod:`.derive`: the discrete architecture, repaired to the limits with hw_models' real costs.

The search engine runs it (``sparse_nas.search.dnas_driver``): each derived
architecture becomes an ordinary trial of the job's study, trained from scratch.
docs/dnas.md describes the whole method.
"""

from sparse_nas.strategies.dnas.costs import METRICS, CostTable, SupernetCostModel, cost_tables, smooth_max
from sparse_nas.strategies.dnas.derive import Derivation, DerivationError, Deriver
from sparse_nas.strategies.dnas.plan import (
    SUPERNET_METHODS,
    SUPPORTED_SEARCH_SPACES,
    BaseSupernetPlan,
    DecisionNode,
    DnasPlanError,
    DSCNNPlan,
    OpTerm,
    SparseCNNPlan,
    make_plan,
)
from sparse_nas.strategies.dnas.search import (
    SearchCancelled,
    SearchConfig,
    SearchReport,
    SweepMember,
    arch_penalty,
    architecture_loss,
    penalty_sweep,
    search,
)
from sparse_nas.strategies.dnas.supernet import ArchParameters, BaseSupernet, build_supernet

__all__ = [
    "METRICS",
    "SUPERNET_METHODS",
    "SUPPORTED_SEARCH_SPACES",
    "ArchParameters",
    "BaseSupernet",
    "BaseSupernetPlan",
    "CostTable",
    "DSCNNPlan",
    "DecisionNode",
    "Derivation",
    "DerivationError",
    "Deriver",
    "DnasPlanError",
    "OpTerm",
    "SearchCancelled",
    "SearchConfig",
    "SearchReport",
    "SparseCNNPlan",
    "SupernetCostModel",
    "SweepMember",
    "arch_penalty",
    "architecture_loss",
    "build_supernet",
    "cost_tables",
    "make_plan",
    "penalty_sweep",
    "search",
    "smooth_max",
]
