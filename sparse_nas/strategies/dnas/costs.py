"""Differentiable hardware costs of a supernet, equal to hw_models on one-hot choices.

MicroNets (Banbury et al., arXiv 2010.11267, Sec. 3) penalises a supernet's expected
flash, working memory and ops. Here every term comes from hw_models itself:

* **Tables.** Each op of the derived chain (:class:`~.plan.OpTerm`) is written as a
  one-op network for every joint choice of the nodes it depends on, and costed in one
  vectorised ``hw_models.estimate_batch`` call. Its entries are the op's share of the
  network's totals: model bytes (weights at their bits and structure, sparse indices,
  biases, quantisation parameters, metadata; minus the one-op network's header and its
  input tensor's entry), persistent SRAM bytes (minus the input tensor's), its working
  set (the one-op network's live bytes: input, output and kernel scratch, each aligned;
  SpArSe's working memory under the ``ideal`` runtime), MACs and latency.
* **Expectations.** With independent categorical distributions p over the nodes (the
  architecture parameters' softmax), a term's expected cost is its table contracted
  with the p of its nodes, times the probability that the op exists (its depth gate).
  Flash, persistent bytes, MACs and latency are sums over ops plus constants (header,
  the input tensor's entries, firmware SRAM, base runtime code) and runtime code per op
  kind used (the kind's probability of being present): their expectation is exact, and
  on one-hot p they equal ``hw_models.estimate`` of the derived network.
* **SRAM.** On a chain, the tensors alive while op s runs are its input, its output and
  its scratch, so the largest working set over ops is hw_models' ``peak_live_bytes``:
  SRAM = max over ops of the expected working set + persistent + firmware. The max is
  smoothed for the gradient (``tau * logsumexp(x / tau)``, tau relative to the largest
  term) and exact in value (straight-through: the forward value is the max). The
  runtime's greedy arena plan is never below the peak of live bytes and equals it on
  most chains (the plan is not optimal: on 15 of 600 random chains of ds_cnn and
  sparse_cnn it was 2-19% larger), so on one-hot choices this SRAM equals hw_models'
  ``sram_bytes`` whenever ``arena_bytes == peak_live_bytes`` and is a lower bound
  otherwise. The derived architecture is therefore always checked with hw_models'
  real plan (:mod:`.derive`), and the hinge targets sit below the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hw_models import DeviceSpec, estimate_batch, get_device
from hw_models.model_file import graph_fixed_bytes, model_file_fixed_bytes
from hw_models.persistent import graph_persistent_fixed_bytes, model_persistent_fixed_bytes
from hw_models.runtimes import RuntimeProfile, get_runtime
from sparse_nas.strategies.dnas.plan import BaseSupernetPlan, DecisionNode, joint_choices

if TYPE_CHECKING:
    import torch

METRICS = ("flash_bytes", "persistent_bytes", "working_set_bytes", "macs", "latency_ms")
"""Columns of a cost table: one op's share of each total."""

SRAM_TEMPERATURE = 0.02
"""Smooth-max temperature, relative to the largest working set."""


@dataclass(frozen=True)
class CostTable:
    """One op's costs for every joint choice of its nodes.

    Attributes:
        name: The op.
        op: Its hw_models op kind.
        nodes: The nodes indexing the table's leading axes.
        present: ``(depth node, depth choice indices)`` where the op exists; None: always.
        values: ``(*[len(node) for node in nodes], len(METRICS))`` float64.
    """

    name: str
    op: str
    nodes: tuple[str, ...]
    present: tuple[str, frozenset[int]] | None
    values: np.ndarray

    def at(self, choice: Mapping[str, int]) -> dict[str, float]:
        """The op's costs for one choice index per node."""
        row = self.values[tuple(choice[n] for n in self.nodes)]
        return dict(zip(METRICS, (float(v) for v in row), strict=True))


def choice_values(node: DecisionNode, indices: np.ndarray) -> np.ndarray:
    """The values of ``node``'s choices at ``indices`` (an object array for tuple choices)."""
    if all(isinstance(c, int | float | str) and not isinstance(c, bool) for c in node.choices):
        return np.asarray(node.choices)[indices]
    out = np.empty(len(indices), dtype=object)
    for row, j in enumerate(indices):
        out[row] = node.choices[int(j)]
    return out


def cost_tables(
    plan: BaseSupernetPlan, device: DeviceSpec | str, runtime: RuntimeProfile | str = "tflm"
) -> list[CostTable]:
    """Every op's cost table, each from one ``hw_models.estimate_batch`` call."""
    device = get_device(device) if isinstance(device, str) else device
    runtime = get_runtime(runtime)
    tables = []
    for term in plan.terms():
        sizes = [len(plan.node(name)) for name in term.nodes]
        rows = joint_choices(sizes)
        values = {name: choice_values(plan.node(name), rows[:, axis]) for axis, name in enumerate(term.nodes)}
        batch = term.write(values).build_batch()
        batch.size = len(rows)
        report = estimate_batch(batch, device, runtime)
        columns = {
            # The term's own network has a header, an input and an OperatorCode: not the op's.
            "flash_bytes": report.model_bytes - graph_fixed_bytes(batch.graph, runtime),
            "persistent_bytes": report.persistent_bytes - graph_persistent_fixed_bytes(batch.graph, runtime),
            "working_set_bytes": report.peak_live_bytes,
            "macs": report.macs,
            "latency_ms": report.latency_ms,
        }
        table = np.stack([np.asarray(columns[m], dtype=np.float64) for m in METRICS], axis=-1)
        tables.append(CostTable(term.name, term.op, term.nodes, term.present, table.reshape(*sizes, len(METRICS))))
    return tables


class SupernetCostModel:
    """Expected flash, SRAM, MACs and latency of a supernet's architecture distribution.

    Args:
        plan: The supernet plan.
        device: Target device, or its catalogue name.
        runtime: Deployment runtime profile.
        sram_temperature: Smooth-max temperature, relative to the largest working set.
    """

    def __init__(
        self,
        plan: BaseSupernetPlan,
        device: DeviceSpec | str,
        runtime: RuntimeProfile | str = "tflm",
        *,
        sram_temperature: float = SRAM_TEMPERATURE,
    ):
        import torch

        self.plan = plan
        self.device = get_device(device) if isinstance(device, str) else device
        self.runtime = get_runtime(runtime)
        self.sram_temperature = sram_temperature
        self.tables = cost_tables(plan, self.device, self.runtime)
        self._tensors = [torch.as_tensor(t.values, dtype=torch.float64) for t in self.tables]
        r = self.runtime
        network_input = (len(plan.space.hw_input_shape()), plan.bits)
        self.flash_constant = float(model_file_fixed_bytes(r, [network_input], ()) + r.code_base_bytes)
        self.sram_constant = float(
            (model_persistent_fixed_bytes(r, n_inputs=1, n_outputs=1) if r.plan_arena else 0)
            + (self.device.sram_overhead_bytes if r.include_sram_overhead else 0)
        )
        # Runtime code per op kind: present when any op of that kind is.
        self.kinds: dict[str, tuple[bool, frozenset[int], str | None]] = {}
        for t in self.tables:
            always, indices, node = self.kinds.get(t.op, (False, frozenset(), None))
            if t.present is None:
                always = True
            else:
                node = t.present[0]
                indices = indices | t.present[1]
            self.kinds[t.op] = (always, indices, node)

    def expected(self, probabilities: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Expected costs (0-d float64 tensors) of independent node distributions.

        Args:
            probabilities: One probability vector (``len(node)``) per node name.

        Returns:
            ``flash_bytes``, ``sram_bytes``, ``macs``, ``latency_ms`` and
            ``working_set_bytes`` (the smoothed largest working set).
        """
        import torch

        p = {name: v.to(torch.float64) for name, v in probabilities.items()}
        totals = torch.zeros(len(METRICS), dtype=torch.float64)
        working_sets = []
        for table, values in zip(self.tables, self._tensors, strict=True):
            expected = values
            for name in table.nodes:
                expected = torch.tensordot(p[name], expected, dims=([0], [0]))
            if table.present is not None:
                node, indices = table.present
                expected = expected * p[node][sorted(indices)].sum()
            totals = totals + expected
            working_sets.append(expected[METRICS.index("working_set_bytes")])
        code = torch.zeros((), dtype=torch.float64) + self.runtime.code_base_bytes
        for kind, (always, indices, node) in self.kinds.items():
            # Each kind present links its kernel and adds an OperatorCode to the model file.
            size = self.runtime.code_bytes_per_op_kind.get(kind, 0)
            if self.runtime.stored_weights:
                size += self.runtime.metadata_bytes_per_op_kind
            present = 1.0 if always or node is None else p[node][sorted(indices)].sum()
            code = code + size * present
        peak = smooth_max(torch.stack(working_sets), self.sram_temperature)
        column = dict(zip(METRICS, totals, strict=True))
        model_constant = self.flash_constant - self.runtime.code_base_bytes
        return {
            "flash_bytes": column["flash_bytes"] + model_constant + code,
            "sram_bytes": column["persistent_bytes"] + self.sram_constant + peak,
            "macs": column["macs"],
            "latency_ms": column["latency_ms"],
            "working_set_bytes": peak,
        }

    def at(self, choice: Mapping[str, int]) -> dict[str, float]:
        """The costs of one choice index per node (the one-hot case), as floats."""
        import torch

        probabilities = {}
        for node in self.plan.nodes:
            one_hot = torch.zeros(len(node), dtype=torch.float64)
            one_hot[choice[node.name]] = 1.0
            probabilities[node.name] = one_hot
        return {k: float(v) for k, v in self.expected(probabilities).items()}


def smooth_max(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """``max(values)`` in value, with the gradient of ``tau * logsumexp(values / tau)``.

    ``tau`` is ``temperature`` times the largest value (at least one unit), so the
    smoothing is relative; the straight-through form keeps the value exact.
    """
    import torch

    scale = values.detach().abs().max().clamp_min(1.0) * temperature
    soft = scale * torch.logsumexp(values / scale, dim=0)
    return values.max().detach() + (soft - soft.detach())


def expected_of(model: SupernetCostModel, logits: Mapping[str, Any]) -> dict[str, float]:
    """Expected costs under the softmax of ``logits`` (numpy or torch), as floats."""
    import torch

    probabilities = {
        name: torch.softmax(torch.as_tensor(np.asarray(v), dtype=torch.float64), 0) for name, v in logits.items()
    }
    return {k: float(v) for k, v in model.expected(probabilities).items()}
