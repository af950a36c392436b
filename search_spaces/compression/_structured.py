"""Structured (channel / neuron) pruning that really removes channels from a model.

`prune_channels(model, keep_ratios)` returns a NEW, smaller model: the chosen layers
lose their lowest-importance output channels (conv filters, linear neurons) and the
layer that consumes them loses the matching input channels or columns, through
BatchNorm, activations, pooling, dropout, depthwise convolutions and Flatten. The new
model computes exactly what the original computes when those channels are zeroed where
they enter the consuming layer.

Importance criteria:
- ``"l1"``: L1 norm of each output channel's weights (Li et al., "Pruning Filters for
  Efficient ConvNets", ICLR 2017, arXiv 1608.08710, Sec. 3.1).
- ``"bn_gamma"``: |gamma| of the BatchNorm right after the layer (Liu et al., "Learning
  Efficient Convolutional Networks through Network Slimming", ICCV 2017,
  arXiv 1708.06519, Sec. 4); the L1 sparsity penalty on gamma they train with is the
  trainer's business.

Supported graphs, honestly: a chain. The model is an `nn.Sequential` (nested
`nn.Sequential`s are walked in order) whose leaves are `nn.Conv2d` (dense, or depthwise
with one output per input channel), `nn.Linear`, `DenseLinear`, `nn.BatchNorm1d/2d`,
`nn.Flatten` (default dims), element-wise activations, pools and dropout. Anything
else (residual blocks, other containers, grouped convolutions, compressed layers other
than ``dense``) raises `StructuredPruningError` naming the module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from search_spaces.compression._dense import DenseLinear
from search_spaces.errors import InvalidCompressionError

Importance = Literal["l1", "bn_gamma"]

# Modules that act on each channel independently and hold no per-channel state.
_CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class StructuredPruningError(InvalidCompressionError):
    """The model or the request is outside what structured pruning supports."""


@dataclass(frozen=True)
class _Leaf:
    name: str
    module: nn.Module


def _leaves(model: nn.Module) -> list[_Leaf]:
    """Leaf modules of nested nn.Sequentials in execution order, by qualified name."""
    if not isinstance(model, nn.Sequential):
        raise StructuredPruningError(
            f"structured pruning needs an nn.Sequential (a chain of layers), got {type(model).__name__}"
        )
    out: list[_Leaf] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for key, child in seq.named_children():
            name = f"{prefix}{key}"
            if isinstance(child, nn.Sequential):
                walk(child, f"{name}.")
            elif len(list(child.children())):
                raise StructuredPruningError(
                    f"{name}: {type(child).__name__} is a container other than nn.Sequential; its "
                    "forward may not be a chain, so structured pruning does not support it"
                )
            else:
                out.append(_Leaf(name, child))

    walk(model, "")
    return out


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1


def _is_producer(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear | DenseLinear)


def _out_count(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def channel_importance(model: nn.Sequential, layer: str, importance: Importance = "l1") -> torch.Tensor:
    """Importance score of each output channel / neuron of `layer`.

    Args:
        model: the chain (see the module docstring).
        layer: qualified name of a Conv2d, Linear or DenseLinear in `model` (``"0"``,
            ``"features.3"``).
        importance: ``"l1"`` (sum of |w| over each output's weights, arXiv 1608.08710)
            or ``"bn_gamma"`` (|gamma| of the BatchNorm that directly follows,
            arXiv 1708.06519).

    Returns:
        (out_channels,) float scores; larger is more important.
    """
    leaves = _leaves(model)
    i = _index(leaves, layer)
    module = leaves[i].module
    if importance == "l1":
        return module.weight.detach().abs().flatten(1).sum(dim=1)
    if importance == "bn_gamma":
        bn = leaves[i + 1].module if i + 1 < len(leaves) else None
        if not isinstance(bn, _BATCH_NORMS) or bn.weight is None or bn.num_features != _out_count(module):
            raise StructuredPruningError(
                f"{layer}: importance 'bn_gamma' needs an affine BatchNorm with {_out_count(module)} "
                "features directly after the layer"
            )
        return bn.weight.detach().abs()
    raise StructuredPruningError(f"importance must be 'l1' or 'bn_gamma', got {importance!r}")


def _index(leaves: list[_Leaf], layer: str) -> int:
    for i, leaf in enumerate(leaves):
        if leaf.name == layer:
            if not _is_producer(leaf.module):
                raise StructuredPruningError(
                    f"{layer}: cannot prune the outputs of {type(leaf.module).__name__}; prunable layers are "
                    "nn.Conv2d with groups=1, nn.Linear and DenseLinear"
                )
            return i
    raise StructuredPruningError(
        f"{layer!r} is not a layer of the model; prunable layers: "
        f"{', '.join(leaf.name for leaf in leaves if _is_producer(leaf.module))}"
    )


def select_channels(
    model: nn.Sequential, keep_ratios: Mapping[str, float], importance: Importance = "l1"
) -> dict[str, torch.Tensor]:
    """Indices of the output channels each named layer keeps, the most important ones.

    Args:
        model: the chain (see the module docstring).
        keep_ratios: layer name -> fraction of its outputs kept, in (0, 1]; a layer
            keeps ``max(1, round(ratio * outputs))``.
        importance: ``"l1"`` or ``"bn_gamma"`` (see `channel_importance`).

    Returns:
        layer name -> (kept,) int64 indices in increasing order (ties keep the lower index).
    """
    kept: dict[str, torch.Tensor] = {}
    for layer, ratio in keep_ratios.items():
        if not 0.0 < ratio <= 1.0:
            raise StructuredPruningError(f"keep_ratios[{layer!r}] must be in (0, 1], got {ratio!r}")
        scores = channel_importance(model, layer, importance)
        count = max(1, int(ratio * scores.numel() + 0.5))
        order = torch.argsort(scores, descending=True, stable=True)
        kept[layer] = torch.sort(order[:count]).values
    return kept


def remove_channels(model: nn.Sequential, kept: Mapping[str, torch.Tensor]) -> nn.Sequential:
    """A deep copy of `model` in which each named layer keeps only the given outputs.

    The layer's weight rows (and bias) are sliced, then the following modules are
    followed to the next Conv2d / Linear / DenseLinear, whose input channels (columns,
    expanded over the spatial positions after a Flatten) are sliced the same way;
    BatchNorms and depthwise convolutions on the way are sliced too. The copy equals
    `model` with the dropped channels set to zero at the input of that consumer.

    Args:
        model: the chain (see the module docstring); it is not modified.
        kept: layer name -> indices of the outputs to keep (as `select_channels` gives).

    Returns:
        The smaller model, in the same training / eval mode.
    """
    leaves = _leaves(model)
    for layer in kept:
        _index(leaves, layer)
    new = copy.deepcopy(model)
    new_leaves = _leaves(new)
    by_name = {leaf.name: i for i, leaf in enumerate(new_leaves)}
    # Consumers are sliced along inputs, producers along outputs: independent axes, so
    # the order of layers does not matter.
    for layer, indices in kept.items():
        i = by_name[layer]
        idx = torch.as_tensor(indices, dtype=torch.long)
        count = _out_count(new_leaves[i].module)
        if idx.ndim != 1 or idx.numel() == 0 or idx.unique().numel() != idx.numel():
            raise StructuredPruningError(f"kept[{layer!r}] must be distinct indices, at least one")
        if int(idx.min()) < 0 or int(idx.max()) >= count:
            raise StructuredPruningError(f"kept[{layer!r}] indices must be in [0, {count})")
        _slice_outputs(new_leaves[i].module, idx)
        _slice_consumer(new_leaves, i, idx, count)
    return new


def prune_channels(
    model: nn.Sequential, keep_ratios: Mapping[str, float], importance: Importance = "l1"
) -> nn.Sequential:
    """A new model in which each named layer keeps its most important outputs.

    `select_channels` then `remove_channels`; see them for the arguments.
    """
    return remove_channels(model, select_channels(model, keep_ratios, importance))


def _new_param(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)


def _slice_outputs(m: nn.Module, idx: torch.Tensor) -> None:
    m.weight = _new_param(m.weight, m.weight[idx])
    if m.bias is not None:
        m.bias = _new_param(m.bias, m.bias[idx])
    if isinstance(m, nn.Conv2d):
        m.out_channels = idx.numel()
    else:
        m.out_features = idx.numel()


def _slice_batch_norm(bn: nn.modules.batchnorm._BatchNorm, idx: torch.Tensor) -> None:
    if bn.affine:
        bn.weight = _new_param(bn.weight, bn.weight[idx])
        bn.bias = _new_param(bn.bias, bn.bias[idx])
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[idx].clone()
        bn.running_var = bn.running_var[idx].clone()
    bn.num_features = idx.numel()


def _slice_consumer(leaves: list[_Leaf], producer: int, idx: torch.Tensor, count: int) -> None:
    """Slice everything after `producer` up to and including the layer that consumes it.

    `count` is the number of features the (not yet sliced) modules downstream expect;
    `idx` selects the kept ones. After a Flatten the channel indices are expanded to the
    flattened features when the next module reveals the spatial size.
    """
    source = leaves[producer].name
    pending_flatten = flat = False
    for leaf in leaves[producer + 1 :]:
        m = leaf.module
        if isinstance(m, _CHANNELWISE):
            continue
        if isinstance(m, nn.Flatten) and not (pending_flatten or flat) and (m.start_dim, m.end_dim) == (1, -1):
            pending_flatten = True
            continue
        if isinstance(m, _BATCH_NORMS):
            if pending_flatten:
                idx, count = _expand(leaf.name, idx, m.num_features, count)
                pending_flatten, flat = False, True
            _check_features(leaf.name, m.num_features, count, source)
            _slice_batch_norm(m, idx)
            continue
        if _is_depthwise(m) and not (pending_flatten or flat):
            _check_features(leaf.name, m.in_channels, count, source)
            _slice_outputs(m, idx)
            m.in_channels = m.groups = idx.numel()
            continue
        if isinstance(m, nn.Conv2d) and m.groups == 1 and not (pending_flatten or flat):
            _check_features(leaf.name, m.in_channels, count, source)
            m.weight = _new_param(m.weight, m.weight[:, idx])
            m.in_channels = idx.numel()
            return
        if isinstance(m, nn.Linear | DenseLinear):
            if pending_flatten:
                idx, count = _expand(leaf.name, idx, m.in_features, count)
            elif not flat and isinstance(leaves[producer].module, nn.Conv2d):
                raise StructuredPruningError(
                    f"{leaf.name}: a linear layer after convolution {source} without nn.Flatten acts on the "
                    "width axis, not on channels"
                )
            _check_features(leaf.name, m.in_features, count, source)
            m.weight = _new_param(m.weight, m.weight[:, idx])
            m.in_features = idx.numel()
            return
        raise StructuredPruningError(
            f"{leaf.name}: cannot carry pruned channels of {source} through {type(m).__name__} here; supported "
            "between layers: BatchNorm1d/2d, depthwise Conv2d, one Flatten(1, -1), element-wise activations, "
            "pooling, dropout"
        )
    raise StructuredPruningError(
        f"{source}: no layer consumes its outputs; pruning them would change the model's output size"
    )


def _expand(name: str, idx: torch.Tensor, features: int, channels: int) -> tuple[torch.Tensor, int]:
    """Channel indices -> flattened (C, H, W) feature indices, and the flattened count.

    Channel c of C owns features c*HW .. c*HW + HW - 1 of torch's row-major Flatten.
    """
    if features % channels:
        raise StructuredPruningError(f"{name}: {features} flattened features are not a multiple of {channels} channels")
    spatial = features // channels
    return (idx[:, None] * spatial + torch.arange(spatial)).flatten(), features


def _check_features(name: str, features: int, expected: int, source: str) -> None:
    if features != expected:
        raise StructuredPruningError(
            f"{name}: expects {features} input features but {source} leads to {expected}; the model is not a chain"
        )
