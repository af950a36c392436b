"""The decision space of a family's supernet: its decision nodes, fixed skeleton and ops.

A plan turns a search space (``ds_cnn``, ``sparse_cnn``) into what the differentiable
search works with (MicroNets, Banbury et al., arXiv 2010.11267, Sec. 3; FBNetV2, Wan et
al., arXiv 2004.05565, for channel and kernel masking):

* **Decision nodes.** Each is one categorical choice with its own architecture
  parameters: a layer's width (multiples of 4, the family's channel range), a depthwise
  or conv kernel, a layer's compression (a pointwise conv's method and level, or a conv's
  pruning density), ds_cnn's first-block stride (the resolution of every later block),
  and the depth. Depth is "the network ends after block d": the blocks
  after it are identities, which every shape allows because a global average pool
  follows; an identity in the middle of the network would need the family to express
  "block i absent", which its parameters (``n_blocks``, ``n_conv``) do not.
* **The skeleton.** What the supernet does not search is fixed: the other strides, the
  stem kernel, no skips, no separable convs, no hidden dense layers, the precision.
* **Op terms.** The derived network is a chain of ops (stem, per block ops, pool,
  classifier). Each op's costs depend on the choices of at most a few nodes (its input
  width, its width, kernel, compression) and, through a gate, on the depth. A term
  writes that op, for arrays of those choices, into a one-op hw_models network: costing
  the term's table is a call to hw_models (:mod:`.costs`), not a re-implementation.
* ``params(choice)`` maps one choice per node onto the family's parameters: the derived
  architecture is an ordinary point of the family's space.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from optuna.distributions import CategoricalDistribution, IntDistribution

from hw_models import NetworkBuilder, Sparse
from search_spaces.families import BaseSearchSpace

# The families' own mapping from (method, matrix shape, level) to a hw_models structure:
# the supernet's op terms must cost a pointwise conv exactly as the family describes it.
from search_spaces.families._knobs import MAX_LEVEL, structure
from sparse_nas.errors import SparseNASError

NodeKind = Literal["width", "depth", "kernel", "compression", "stride"]
Compression = tuple[str, int]
"""A compression choice: (method, level); ``dense`` ignores the level."""

SUPERNET_METHODS = ("dense", "magnitude_pruning", "low_rank")
"""Compression methods the supernet has layers for (docs/dnas.md: why not the others)."""


class DnasPlanError(SparseNASError, ValueError):
    """A search space or option the differentiable search cannot plan a supernet for."""


@dataclass(frozen=True)
class DecisionNode:
    """One categorical decision of the supernet, with its choices in order."""

    name: str
    kind: NodeKind
    choices: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.choices)


@dataclass(frozen=True)
class OpTerm:
    """One op of the derived network and the nodes its costs depend on.

    Attributes:
        name: The op's name (the family's layer name).
        op: Its hw_models op kind (runtime code is linked in per kind).
        nodes: Nodes whose choices index the op's cost table, in axis order.
        write: Given one array of choice *values* per node (all of one length N), a
            NetworkBuilder holding a one-op network of N candidates: the graph input is
            the op's input, its single layer is the op exactly as the family writes it.
        present: ``(depth node, depth choice indices)`` for which the op exists, or
            None when it always does.
    """

    name: str
    op: str
    nodes: tuple[str, ...]
    write: Callable[[Mapping[str, np.ndarray]], NetworkBuilder]
    present: tuple[str, frozenset[int]] | None = None


def same_size(size: int, stride: int) -> int:
    """Output size of a SAME-padded op (TFLite): ceil(size / stride)."""
    return -(-size // stride)


def _categorical_choices(dist: Any) -> tuple[Any, ...]:
    if not isinstance(dist, CategoricalDistribution):
        raise DnasPlanError(f"expected a categorical distribution, got {dist}")
    return tuple(dist.choices)


def _int_choices(dist: Any, name: str) -> tuple[int, ...]:
    if not isinstance(dist, IntDistribution) or dist.log:
        raise DnasPlanError(f"{name}: expected a linear integer distribution, got {dist}")
    return tuple(range(dist.low, dist.high + 1, dist.step))


class BaseSupernetPlan(abc.ABC):
    """A family's supernet plan (see the module docstring).

    Contract: ``nodes`` and ``terms()`` are fixed for given arguments; the terms'
    networks chained in order are the family's ``to_network(params(choice))`` for every
    choice (tests/sparse_nas_tests/test_dnas.py checks that their costs add up to it);
    ``params(choice)`` is a complete, valid point of ``space``. Picklable.

    Args:
        space: The job's search space.
        compression: Compression choices of compressible layers, among
            :data:`SUPERNET_METHODS`; those the family's options do not allow are left out.
    """

    family: ClassVar[str]
    depth_node: ClassVar[str]

    def __init__(self, space: BaseSearchSpace, compression: Sequence[Compression]):
        if space.name != self.family:
            raise DnasPlanError(f"search_space: a {type(self).__name__} plans {self.family!r}, got {space.name!r}")
        for method, level in compression:
            if method not in SUPERNET_METHODS or not (method == "dense" or 1 <= level <= MAX_LEVEL):
                raise DnasPlanError(
                    f"dnas.compression: {method}:{level} is not a supernet choice; methods {list(SUPERNET_METHODS)}, "
                    f"levels 1-{MAX_LEVEL}"
                )
        self.space = space
        self.distributions = space.distributions()
        self.bits = space.activation_bits({"quantization": self.quantization})
        self.nodes: tuple[DecisionNode, ...] = tuple(self._nodes(tuple(compression)))
        self._index = {node.name: node for node in self.nodes}

    @property
    def quantization(self) -> str:
        """The precision of every derived network: int8 where the family allows it."""
        allowed = self.space.options["quantization"]
        return "int8" if "int8" in allowed else allowed[0]

    def node(self, name: str) -> DecisionNode:
        return self._index[name]

    @abc.abstractmethod
    def _nodes(self, compression: tuple[Compression, ...]) -> list[DecisionNode]:
        """The decision nodes, the depth node among them."""

    @abc.abstractmethod
    def terms(self) -> list[OpTerm]:
        """The derived network's ops in execution order."""

    @abc.abstractmethod
    def params(self, choice: Mapping[str, int]) -> dict[str, Any]:
        """The family's parameters for one choice index per node."""

    def depth_present(self, blocks_before: int) -> tuple[str, frozenset[int]]:
        """Gate of an op of block ``blocks_before``: the depth choices that keep that block."""
        depths = self.node(self.depth_node).choices
        return self.depth_node, frozenset(j for j, d in enumerate(depths) if d > blocks_before)

    def depth_equals(self, depth: int) -> tuple[str, frozenset[int]]:
        """Gate of the head ops reading block ``depth - 1``: the depth choice ``depth``."""
        return self.depth_node, frozenset({self.node(self.depth_node).choices.index(depth)})

    def values(self, choice: Mapping[str, int]) -> dict[str, Any]:
        """The chosen value of every node."""
        return {node.name: node.choices[choice[node.name]] for node in self.nodes}

    def _compression_node(
        self, name: str, compression: tuple[Compression, ...], allowed: Sequence[str]
    ) -> DecisionNode:
        choices = tuple(c for c in compression if c[0] in allowed)
        if not choices:
            raise DnasPlanError(
                f"dnas.compression: none of {[f'{m}:{lv}' for m, lv in compression]} is allowed for {name} "
                f"(search space methods {list(allowed)})"
            )
        return DecisionNode(name, "compression", choices)

    def _head_terms(
        self,
        widths: Sequence[str],
        spatial: Callable[[Mapping[str, np.ndarray], int], tuple[Any, Any]],
        spatial_nodes: tuple[str, ...] = (),
    ) -> list[OpTerm]:
        """Global average pool and classifier reading block ``d - 1``, one pair per depth d.

        ``spatial(values, block)`` is (H, W) of a block's output; ``spatial_nodes`` the nodes it reads.
        """
        terms = []
        bits, classes = self.bits, self.space.num_classes
        for depth in self.node(self.depth_node).choices:
            width = widths[depth - 1]

            def pool(v: Mapping[str, np.ndarray], width: str = width, block: int = depth - 1) -> NetworkBuilder:
                b = NetworkBuilder("pool", (*spatial(v, block), v[width]), bits=bits)
                b.global_avg_pool(b.input, name="pool")
                return b

            def classifier(v: Mapping[str, np.ndarray], width: str = width) -> NetworkBuilder:
                b = NetworkBuilder("classifier", (v[width],), bits=bits)
                b.linear(b.input, classes, weight_bits=bits, name="classifier")
                return b

            gate = self.depth_equals(depth)
            terms.append(OpTerm(f"pool@{depth}", "global_avg_pool", (width, *spatial_nodes), pool, gate))
            terms.append(OpTerm(f"classifier@{depth}", "linear", (width,), classifier, gate))
        return terms


class DSCNNPlan(BaseSupernetPlan):
    """``ds_cnn``: stem width, per block width, depthwise kernel and pointwise compression, first stride, depth.

    The first block's stride (1 or 2) sets the resolution of every block after it: it
    is a node of each of their ops (a second axis of their tables, a second resolution
    of the supernet's blocks). Skeleton: the first of the ``stem_kernels`` option, stem
    strides 2 x 2, the other blocks' strides 1 (the MLPerf Tiny DS-CNN layout), no
    skips, the family's precision.
    """

    family = "ds_cnn"
    depth_node = "n_blocks"
    stride_node = "block0_stride"
    STEM_STRIDE = (2, 2)
    BLOCK_STRIDE = 1

    def _nodes(self, compression: tuple[Compression, ...]) -> list[DecisionNode]:
        d = self.distributions
        self.max_blocks = self.space.options["max_blocks"]
        nodes = [DecisionNode("stem_channels", "width", _int_choices(d["stem_channels"], "stem_channels"))]
        nodes.append(DecisionNode(self.stride_node, "stride", _int_choices(d["block0_stride"], "block0_stride")))
        for i in range(self.max_blocks):
            nodes.append(DecisionNode(f"block{i}_channels", "width", _int_choices(d[f"block{i}_channels"], "channels")))
            nodes.append(DecisionNode(f"block{i}_dw_kernel", "kernel", _categorical_choices(d[f"block{i}_dw_kernel"])))
            nodes.append(self._compression_node(f"block{i}_pw", compression, self.space.options["methods"]))
        nodes.append(DecisionNode("n_blocks", "depth", _int_choices(d["n_blocks"], "n_blocks")))
        return nodes

    @property
    def stem_kernel(self) -> str:
        return self.space.options["stem_kernels"][0]

    def stem_spatial(self) -> tuple[int, int]:
        """(H, W) of the stem's output."""
        _, h, w = self.space.input_shape
        return same_size(h, self.STEM_STRIDE[0]), same_size(w, self.STEM_STRIDE[1])

    def block_spatial(self, stride: Any) -> tuple[Any, Any]:
        """(H, W) of every block's output, for the first block's stride (an int or an array)."""
        h, w = self.stem_spatial()
        return -(-h // np.asarray(stride)), -(-w // np.asarray(stride))

    def terms(self) -> list[OpTerm]:
        bits = self.bits
        kh, kw = (int(k) for k in self.stem_kernel.split("x"))
        hw_in = self.space.hw_input_shape()
        stride = self.stride_node

        def stem(v: Mapping[str, np.ndarray]) -> NetworkBuilder:
            b = NetworkBuilder("stem", hw_in, bits=bits)
            b.conv2d(b.input, v["stem_channels"], (kh, kw), stride=self.STEM_STRIDE, activation="relu",
                     weight_bits=bits, name="stem")  # fmt: skip
            return b

        terms = [OpTerm("stem", "conv2d", ("stem_channels",), stem)]
        widths = ["stem_channels"] + [f"block{i}_channels" for i in range(self.max_blocks)]
        for i in range(self.max_blocks):
            prev, cur = widths[i], widths[i + 1]

            def dw(v: Mapping[str, np.ndarray], i: int = i, prev: str = prev) -> NetworkBuilder:
                h, w = self.stem_spatial() if i == 0 else self.block_spatial(v[stride])
                b = NetworkBuilder("dw", (h, w, v[prev]), bits=bits)
                s = v[stride] if i == 0 else self.BLOCK_STRIDE
                b.depthwise_conv2d(b.input, v[f"block{i}_dw_kernel"], stride=s, activation="relu",
                                   weight_bits=bits, name=f"block{i}_dw")  # fmt: skip
                return b

            def pw(v: Mapping[str, np.ndarray], i: int = i, prev: str = prev, cur: str = cur) -> NetworkBuilder:
                b = NetworkBuilder("pw", (*self.block_spatial(v[stride]), v[prev]), bits=bits)
                method, level = _split(v[f"block{i}_pw"])
                s = structure(method, v[cur], v[prev], level)
                b.conv2d(b.input, v[cur], 1, activation="relu", weight_bits=bits, structure=s, name=f"block{i}_pw")
                return b

            gate = self.depth_present(i)
            terms.append(OpTerm(f"block{i}_dw", "depthwise_conv2d", (prev, f"block{i}_dw_kernel", stride), dw, gate))
            terms.append(OpTerm(f"block{i}_pw", "conv2d", (prev, cur, f"block{i}_pw", stride), pw, gate))
        terms += self._head_terms(widths[1:], lambda v, block: self.block_spatial(v[stride]), (stride,))
        return terms

    def params(self, choice: Mapping[str, int]) -> dict[str, Any]:
        v = self.values(choice)
        p: dict[str, Any] = {
            "stem_channels": v["stem_channels"],
            "stem_kernel": self.stem_kernel,
            "stem_stride_h": self.STEM_STRIDE[0],
            "stem_stride_w": self.STEM_STRIDE[1],
            "n_blocks": v["n_blocks"],
            "quantization": self.quantization,
        }
        for i in range(self.max_blocks):
            method, level = v[f"block{i}_pw"]
            p |= {
                f"block{i}_channels": v[f"block{i}_channels"],
                f"block{i}_dw_kernel": v[f"block{i}_dw_kernel"],
                f"block{i}_stride": v[self.stride_node] if i == 0 else self.BLOCK_STRIDE,
                f"block{i}_skip": False,
                f"block{i}_pw_method": method,
                f"block{i}_pw_level": max(level, 1),
            }
        return self.space.check_params(p)


class SparseCNNPlan(BaseSupernetPlan):
    """``sparse_cnn``: per conv block width, kernel and pruning density; depth.

    Skeleton: every block downsamples with a stride-2 conv, none is separable, no hidden
    dense layer (their parameters take the smallest values; they are ignored), the
    family's precision. A compression choice ``magnitude_pruning:L`` is the density
    ``2^-L`` (at least the family's minimum density), ``dense`` the density 1.
    """

    family = "sparse_cnn"
    depth_node = "n_conv"
    STRIDE = 2

    def _nodes(self, compression: tuple[Compression, ...]) -> list[DecisionNode]:
        from search_spaces.families.sparse_cnn import MIN_DENSITY

        d = self.distributions
        self.max_blocks = self.space.options["max_conv_blocks"]
        densities = []
        for method, level in compression:
            if method not in ("dense", "magnitude_pruning"):
                continue
            density = 1.0 if method == "dense" else max(2.0**-level, MIN_DENSITY)
            if density not in densities:
                densities.append(density)
        if not densities:
            raise DnasPlanError("dnas.compression: sparse_cnn's convs take only dense or magnitude_pruning choices")
        nodes = []
        for i in range(self.max_blocks):
            nodes.append(DecisionNode(f"conv{i}_channels", "width", _int_choices(d[f"conv{i}_channels"], "channels")))
            nodes.append(DecisionNode(f"conv{i}_kernel", "kernel", _categorical_choices(d[f"conv{i}_kernel"])))
            nodes.append(DecisionNode(f"conv{i}_density", "compression", tuple(densities)))
        nodes.append(DecisionNode("n_conv", "depth", _int_choices(d["n_conv"], "n_conv")))
        return nodes

    def spatial(self) -> list[tuple[int, int]]:
        """(H, W) of the input and of every block's output."""
        _, h, w = self.space.input_shape
        out = [(h, w)]
        for _ in range(self.max_blocks):
            h, w = same_size(h, self.STRIDE), same_size(w, self.STRIDE)
            out.append((h, w))
        return out

    def terms(self) -> list[OpTerm]:
        bits = self.bits
        spatial = self.spatial()
        c_in = self.space.input_shape[0]
        terms = []
        for i in range(self.max_blocks):
            prev = f"conv{i - 1}_channels" if i else None
            h, w = spatial[i]

            def conv(v: Mapping[str, np.ndarray], i: int = i, prev: str | None = prev, h: int = h, w: int = w):
                b = NetworkBuilder("conv", (h, w, v[prev] if prev else c_in), bits=bits)
                s = Sparse(v[f"conv{i}_density"], "csr")
                b.conv2d(b.input, v[f"conv{i}_channels"], v[f"conv{i}_kernel"], stride=self.STRIDE, activation="relu",
                         weight_bits=bits, structure=s, name=f"conv{i}")  # fmt: skip
                return b

            nodes = ((prev,) if prev else ()) + (f"conv{i}_channels", f"conv{i}_kernel", f"conv{i}_density")
            terms.append(OpTerm(f"conv{i}", "conv2d", nodes, conv, self.depth_present(i)))
        widths = [f"conv{i}_channels" for i in range(self.max_blocks)]
        terms += self._head_terms(widths, lambda v, block: spatial[block + 1])
        return terms

    def params(self, choice: Mapping[str, int]) -> dict[str, Any]:
        v = self.values(choice)
        o = self.space.options
        p: dict[str, Any] = {"n_conv": v["n_conv"], "n_dense": 0, "quantization": self.quantization}
        for i in range(self.max_blocks):
            p |= {
                f"conv{i}_channels": v[f"conv{i}_channels"],
                f"conv{i}_kernel": v[f"conv{i}_kernel"],
                f"conv{i}_downsample": "stride",
                f"conv{i}_separable": False,
                f"conv{i}_density": float(v[f"conv{i}_density"]),
            }
        for j in range(o["max_dense_layers"]):
            p |= {f"dense{j}_units": o["dense_units"][0], f"dense{j}_method": o["methods"][0], f"dense{j}_level": 1}
        return self.space.check_params(p)


PLANS: dict[str, type[BaseSupernetPlan]] = {plan.family: plan for plan in (DSCNNPlan, SparseCNNPlan)}
"""Supernet plans by family name."""

SUPPORTED_SEARCH_SPACES = tuple(sorted(PLANS))


def make_plan(space: BaseSearchSpace, compression: Sequence[Compression]) -> BaseSupernetPlan:
    """The supernet plan of ``space``'s family."""
    if space.name not in PLANS:
        raise DnasPlanError(
            f"search_space: the differentiable search supports {', '.join(SUPPORTED_SEARCH_SPACES)}, not {space.name!r}"
        )
    return PLANS[space.name](space, compression)


def joint_choices(sizes: Sequence[int]) -> np.ndarray:
    """Every joint choice of nodes with these sizes, as an (prod(sizes), len(sizes)) index array (C order)."""
    if not sizes:
        return np.zeros((1, 0), dtype=np.int64)
    return np.asarray(list(itertools.product(*(range(s) for s in sizes))), dtype=np.int64).reshape(
        math.prod(sizes), len(sizes)
    )


def _split(choices: np.ndarray) -> tuple[Any, Any]:
    """(method, level) arrays from an array of compression choices (tuples)."""
    items = np.asarray(choices, dtype=object).ravel()
    methods = np.asarray([c[0] for c in items])
    levels = np.asarray([max(int(c[1]), 1) for c in items], dtype=np.int64)
    return methods, levels
