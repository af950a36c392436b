"""Compression layers: drop-in linear maps with structured weights, and their registry.

Every method is a `BaseCompressedLinear` registered by name (`compression_methods()`):
dense, magnitude_pruning, learned_threshold, low_rank, kronecker, hybrid_kronecker,
doped_kronecker, hmd. `make_linear(method, ...)` builds one; `CompressedConv1x1`
applies any of them as a 1x1 convolution; `CompressedLSTM` / `CompressedGRU` take one
per gate matrix. Structured (channel) pruning is in
`prune_channels`; quantisation in `search_spaces.quantization`.
"""

from search_spaces.compression._base import BaseCompressedLinear, CompressedConv1x1, kaiming_uniform_
from search_spaces.compression._dense import DenseLinear
from search_spaces.compression._hmd import HMDLinear
from search_spaces.compression._kronecker import (
    DopedKroneckerLinear,
    HybridKroneckerLinear,
    KroneckerLinear,
    kronecker_factors,
)
from search_spaces.compression._lowrank import LowRankLinear
from search_spaces.compression._pruned_conv import MaskedConv2d
from search_spaces.compression._pruning import LearnedThresholdLinear, MagnitudePrunedLinear, cubic_density
from search_spaces.compression._registry import compression_methods, make_linear, register_compression
from search_spaces.compression._rnn import (
    BaseCompressedRNN,
    CompressedGRU,
    CompressedLSTM,
    GateMatrixFactory,
    GateMatrixSpec,
    InvalidRNNInputError,
)
from search_spaces.compression._structured import (
    StructuredPruningError,
    channel_importance,
    prune_channels,
    remove_channels,
    select_channels,
)

__all__ = [
    "BaseCompressedLinear",
    "BaseCompressedRNN",
    "CompressedConv1x1",
    "CompressedGRU",
    "CompressedLSTM",
    "DenseLinear",
    "DopedKroneckerLinear",
    "GateMatrixFactory",
    "GateMatrixSpec",
    "HMDLinear",
    "HybridKroneckerLinear",
    "InvalidRNNInputError",
    "KroneckerLinear",
    "LearnedThresholdLinear",
    "LowRankLinear",
    "MagnitudePrunedLinear",
    "MaskedConv2d",
    "StructuredPruningError",
    "channel_importance",
    "compression_methods",
    "cubic_density",
    "kaiming_uniform_",
    "kronecker_factors",
    "make_linear",
    "prune_channels",
    "register_compression",
    "remove_channels",
    "select_channels",
]
