"""The supernet: one torch model holding every architecture of a plan, mixed by gates.

Each decision node's gate is a probability vector over its choices (a Gumbel-softmax
sample of its architecture parameters, :class:`ArchParameters`). Choices share weights
where they can, as in FBNetV2 (Wan et al., arXiv 2004.05565):

* **Width**: a layer is built at its widest choice and its output channels are
  multiplied by the gate-weighted mixture of 0/1 masks (channel c is kept by the
  choices of width > c), after batch norm and ReLU, so cut channels are exactly zero.
* **Kernel**: a depthwise or conv weight at the largest kernel, multiplied by the
  mixture of centred kernel masks (a 3 x 3 choice uses the centre of the 5 x 5 weight;
  padding k_max // 2 keeps the output size).
* **Compression**: ``dense`` and ``magnitude_pruning`` choices share one weight; each
  pruning level multiplies it by a magnitude mask of its density (the largest weights,
  recomputed every step, constant for the gradient as in Zhu & Gupta's pruning).
  ``low_rank`` choices are their own factor pair, of the rank the level gives at the
  widest width. The layer's output is the gate-weighted sum.
* **Depth**: every block runs; the head averages the globally pooled output of each
  block by the depth gate, then applies one classifier.
* **Stride** (ds_cnn's first block): the blocks run once per stride choice, on shared
  weights, and the pooled features mix by the stride's gate.

``path(x, choice)`` runs one architecture alone, on slices of the same weights (the
widths' leading channels, the kernels' centres, the chosen compression, the blocks up
to the depth): the same function as ``forward`` with one-hot gates, at the cost of that
architecture. Weight steps train single paths (the search's weight steps are the bulk
of its work); architecture steps need the soft mixture.

The supernet trains in float32; the derived network is retrained from scratch by the
job's trainer (with QAT for int8), so these proxies only need to rank architectures.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.families import same_padding
from sparse_nas.strategies.dnas.plan import BaseSupernetPlan, DecisionNode, DSCNNPlan, SparseCNNPlan

Gates = Mapping[str, torch.Tensor]
"""One probability vector (``len(node)``) per decision node."""


class ArchParameters(nn.Module):
    """The architecture parameters: one logit vector per decision node, zero (uniform) at the start."""

    def __init__(self, nodes: tuple[DecisionNode, ...]):
        super().__init__()
        self.logits = nn.ParameterDict({node.name: nn.Parameter(torch.zeros(len(node))) for node in nodes})

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Softmax of each node's logits."""
        return {name: torch.softmax(logits, dim=0) for name, logits in self.logits.items()}

    def sample(self, temperature: float) -> dict[str, torch.Tensor]:
        """A Gumbel-softmax sample per node (Jang et al., arXiv 1611.01144), differentiable in the logits."""
        return {name: F.gumbel_softmax(logits, tau=temperature, hard=False) for name, logits in self.logits.items()}

    def argmax(self) -> dict[str, int]:
        return {name: int(torch.argmax(logits)) for name, logits in self.logits.items()}

    def sample_choice(self, generator: torch.Generator | None = None) -> dict[str, int]:
        """One architecture drawn from the softmax of each node's logits."""
        with torch.no_grad():
            return {
                name: int(torch.multinomial(torch.softmax(logits, 0), 1, generator=generator))
                for name, logits in self.logits.items()
            }


def width_masks(node: DecisionNode, channels: int) -> torch.Tensor:
    """``(len(node), channels)`` 0/1: row j keeps the first ``node.choices[j]`` channels."""
    widths = torch.as_tensor(node.choices).unsqueeze(1)
    return (torch.arange(channels).unsqueeze(0) < widths).to(torch.float32)


def kernel_masks(node: DecisionNode) -> torch.Tensor:
    """``(len(node), k_max, k_max)`` 0/1 centred square masks, one per kernel choice."""
    k_max = max(node.choices)
    masks = torch.zeros(len(node), k_max, k_max)
    for j, k in enumerate(node.choices):
        start = (k_max - k) // 2
        masks[j, start : start + k, start : start + k] = 1.0
    return masks


def magnitude_mask(weight: torch.Tensor, density: float, support: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask keeping the ``max(floor(density x n), 1)`` largest ``|weight|`` of the n entries in ``support``."""
    with torch.no_grad():
        scores = weight.abs().flatten()
        n = scores.numel()
        if support is not None:
            support = support.expand_as(weight).flatten()
            n = int(support.sum())
            scores = torch.where(support > 0, scores, torch.full_like(scores, -1.0))
        keep = max(math.floor(density * n), 1)
        mask = torch.zeros_like(scores)
        mask[torch.topk(scores, keep).indices] = 1.0
        return mask.view_as(weight)


def _mix(gate: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.tensordot(gate, masks, dims=([0], [0]))


def _channel_view(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(1, -1, 1, 1)


class BaseSupernet(nn.Module, abc.ABC):
    """A plan's supernet: ``forward(x, gates)`` gives logits ``(N, classes)`` of inputs ``(N, *input_shape)``."""

    def __init__(self, plan: BaseSupernetPlan):
        super().__init__()
        self.plan = plan
        self.depths = plan.node(plan.depth_node).choices

    def _features(self, outputs: list[torch.Tensor], gates: Gates) -> torch.Tensor:
        """Every block's pooled output, zero-padded to the widest, mixed by the depth gate."""
        widest = self.classifier.in_features
        pooled = [F.pad(y.mean(dim=(2, 3)), (0, widest - y.shape[1])) for y in outputs]
        gate = gates[self.plan.depth_node]
        return sum(gate[j] * pooled[d - 1] for j, d in enumerate(self.depths))

    def _path_head(self, y: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.pad(y.mean(dim=(2, 3)), (0, self.classifier.in_features - y.shape[1])))

    @abc.abstractmethod
    def path(self, x: torch.Tensor, choice: Mapping[str, int]) -> torch.Tensor:
        """Logits of one architecture (one choice index per node), on slices of the shared weights."""


def _bn(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """Batch norm of the first ``y.shape[1]`` channels (their running statistics updated in place)."""
    c = y.shape[1]
    return F.batch_norm(
        y, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c], bn.training, bn.momentum, bn.eps
    )


def _centre(weight: torch.Tensor, k: int) -> torch.Tensor:
    start = (weight.shape[-1] - k) // 2
    return weight[..., start : start + k, start : start + k]


class CompressedPointwise(nn.Module):
    """A 1x1 conv with one compression choice per gate entry (see the module docstring)."""

    def __init__(self, node: DecisionNode, c_in: int, c_out: int):
        super().__init__()
        self.choices = node.choices
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.factors = nn.ModuleDict()
        for j, (method, level) in enumerate(node.choices):
            if method == "low_rank":
                # The level's rank at the widest width: rows * cols / 2^L stored values over (rows + cols).
                rank = max(1, min(c_in, c_out, round(c_in * c_out / 2**level / (c_in + c_out))))
                self.factors[str(j)] = nn.Sequential(
                    nn.Conv2d(c_in, rank, 1, bias=False), nn.Conv2d(rank, c_out, 1, bias=False)
                )

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        shared = torch.zeros_like(self.weight)
        for j, (method, level) in enumerate(self.choices):
            if method == "dense":
                shared = shared + gate[j]
            elif method == "magnitude_pruning":
                shared = shared + gate[j] * magnitude_mask(self.weight, 2.0**-level)
        out = F.conv2d(x, self.weight * shared)
        for key, factors in self.factors.items():
            out = out + gate[int(key)] * factors(x)
        return out

    def path(self, x: torch.Tensor, j: int, c_out: int) -> torch.Tensor:
        """Choice ``j`` alone, on the first ``x.shape[1]`` input and ``c_out`` output channels."""
        c_in = x.shape[1]
        method, level = self.choices[j]
        if method == "low_rank":
            down, up = self.factors[str(j)]
            return F.conv2d(F.conv2d(x, down.weight[:, :c_in]), up.weight[:c_out])
        weight = self.weight
        if method == "magnitude_pruning":
            weight = weight * magnitude_mask(weight, 2.0**-level)
        return F.conv2d(x, weight[:c_out, :c_in])


class DSCNNSupernet(BaseSupernet):
    """``ds_cnn``'s supernet: stem, depthwise-separable blocks, pooled head (:class:`~.plan.DSCNNPlan`)."""

    def __init__(self, plan: DSCNNPlan):
        super().__init__(plan)
        c_in, h, w = plan.space.input_shape
        kh, kw = (int(k) for k in plan.stem_kernel.split("x"))
        sh, sw = plan.STEM_STRIDE
        top, bottom = same_padding(h, kh, sh)
        left, right = same_padding(w, kw, sw)
        stem = plan.node("stem_channels")
        self.stem = nn.Sequential(
            nn.ZeroPad2d((left, right, top, bottom)), nn.Conv2d(c_in, max(stem.choices), (kh, kw), (sh, sw), bias=False)
        )
        self.stem_bn = nn.BatchNorm2d(max(stem.choices))
        self.register_buffer("stem_masks", width_masks(stem, max(stem.choices)))
        self.blocks = nn.ModuleList()
        prev = stem
        for i in range(plan.max_blocks):
            cur, kernel = plan.node(f"block{i}_channels"), plan.node(f"block{i}_dw_kernel")
            c_prev, c_cur, k_max = max(prev.choices), max(cur.choices), max(kernel.choices)
            block = nn.Module()
            block.dw = nn.Conv2d(c_prev, c_prev, k_max, plan.BLOCK_STRIDE, k_max // 2, groups=c_prev, bias=False)
            block.dw_bn = nn.BatchNorm2d(c_prev)
            block.pw = CompressedPointwise(plan.node(f"block{i}_pw"), c_prev, c_cur)
            block.pw_bn = nn.BatchNorm2d(c_cur)
            block.register_buffer("kernel_masks", kernel_masks(kernel))
            block.register_buffer("width_masks", width_masks(cur, c_cur))
            self.blocks.append(block)
            prev = cur
        widest = max(max(plan.node(f"block{i}_channels").choices) for i in range(plan.max_blocks))
        self.classifier = nn.Linear(widest, plan.space.num_classes)
        self.strides = plan.node(plan.stride_node).choices

    def forward(self, x: torch.Tensor, gates: Gates) -> torch.Tensor:
        stem_mask = _channel_view(_mix(gates["stem_channels"], self.stem_masks))
        stem = F.relu(self.stem_bn(self.stem(x))) * stem_mask
        # Each first-block stride is its own resolution for every block after it: the
        # stack runs once per stride and the pooled features mix by the stride's gate.
        features = 0.0
        for s, stride in enumerate(self.strides):
            x, mask, outputs = stem, stem_mask, []
            for i, block in enumerate(self.blocks):
                kernel = _mix(gates[f"block{i}_dw_kernel"], block.kernel_masks)
                dw = block.dw
                y = F.conv2d(x, dw.weight * kernel, None, stride if i == 0 else dw.stride, dw.padding, groups=dw.groups)
                y = F.relu(block.dw_bn(y)) * mask
                y = block.pw(y, gates[f"block{i}_pw"])
                mask = _channel_view(_mix(gates[f"block{i}_channels"], block.width_masks))
                x = F.relu(block.pw_bn(y)) * mask
                outputs.append(x)
            features = features + gates[self.plan.stride_node][s] * self._features(outputs, gates)
        return self.classifier(features)

    def path(self, x: torch.Tensor, choice: Mapping[str, int]) -> torch.Tensor:
        v = self.plan.values(choice)
        pad, conv = self.stem
        x = F.relu(_bn(self.stem_bn, F.conv2d(pad(x), conv.weight[: v["stem_channels"]], None, conv.stride)))
        for i, block in enumerate(self.blocks[: v[self.plan.depth_node]]):
            k, dw = v[f"block{i}_dw_kernel"], block.dw
            c = x.shape[1]
            stride = v[self.plan.stride_node] if i == 0 else dw.stride
            y = F.conv2d(x, _centre(dw.weight[:c], k), None, stride, k // 2, groups=c)
            y = F.relu(_bn(block.dw_bn, y))
            y = block.pw.path(y, choice[f"block{i}_pw"], v[f"block{i}_channels"])
            x = F.relu(_bn(block.pw_bn, y))
        return self._path_head(x)


class SparseCNNSupernet(BaseSupernet):
    """``sparse_cnn``'s supernet: strided conv blocks with kernel and density choices, pooled head."""

    def __init__(self, plan: SparseCNNPlan):
        super().__init__(plan)
        c_prev = plan.space.input_shape[0]
        self.blocks = nn.ModuleList()
        for i in range(plan.max_blocks):
            cur, kernel = plan.node(f"conv{i}_channels"), plan.node(f"conv{i}_kernel")
            c_cur, k_max = max(cur.choices), max(kernel.choices)
            block = nn.Module()
            block.conv = nn.Conv2d(c_prev, c_cur, k_max, plan.STRIDE, k_max // 2, bias=False)
            block.bn = nn.BatchNorm2d(c_cur)
            block.register_buffer("kernel_masks", kernel_masks(kernel))
            block.register_buffer("width_masks", width_masks(cur, c_cur))
            block.densities = plan.node(f"conv{i}_density").choices
            self.blocks.append(block)
            c_prev = c_cur
        widest = max(max(plan.node(f"conv{i}_channels").choices) for i in range(plan.max_blocks))
        self.classifier = nn.Linear(widest, plan.space.num_classes)

    def forward(self, x: torch.Tensor, gates: Gates) -> torch.Tensor:
        outputs = []
        for i, block in enumerate(self.blocks):
            conv = block.conv
            kernel_gate, density_gate = gates[f"conv{i}_kernel"], gates[f"conv{i}_density"]
            weight = torch.zeros_like(conv.weight)
            for a, support in enumerate(block.kernel_masks):
                at_kernel = conv.weight * support
                for b, density in enumerate(block.densities):
                    if density < 1.0:
                        at_kernel_density = at_kernel * magnitude_mask(at_kernel, density, support)
                    else:
                        at_kernel_density = at_kernel
                    weight = weight + kernel_gate[a] * density_gate[b] * at_kernel_density
            y = F.conv2d(x, weight, None, conv.stride, conv.padding)
            mask = _channel_view(_mix(gates[f"conv{i}_channels"], block.width_masks))
            x = F.relu(block.bn(y)) * mask
            outputs.append(x)
        return self.classifier(self._features(outputs, gates))

    def path(self, x: torch.Tensor, choice: Mapping[str, int]) -> torch.Tensor:
        v = self.plan.values(choice)
        for i, block in enumerate(self.blocks[: v[self.plan.depth_node]]):
            conv, k, density = block.conv, v[f"conv{i}_kernel"], v[f"conv{i}_density"]
            support = block.kernel_masks[choice[f"conv{i}_kernel"]]
            weight = conv.weight * support
            if density < 1.0:
                weight = weight * magnitude_mask(weight, density, support)
            weight = _centre(weight[: v[f"conv{i}_channels"], : x.shape[1]], k)
            x = F.relu(_bn(block.bn, F.conv2d(x, weight, None, conv.stride, k // 2)))
        return self._path_head(x)


def build_supernet(plan: BaseSupernetPlan) -> BaseSupernet:
    """The supernet of ``plan``'s family (weights from torch's default initialisation)."""
    if isinstance(plan, DSCNNPlan):
        return DSCNNSupernet(plan)
    if isinstance(plan, SparseCNNPlan):
        return SparseCNNSupernet(plan)
    raise TypeError(f"no supernet for plan {type(plan).__name__}")
