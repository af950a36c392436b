"""Compression layers: drop-in linear maps with structured weights, and their registry.

Every method is a `BaseCompressedLinear` registered by name; `make_linear(method, ...)`
builds one. `CompressedConv1x1` applies any of them as a 1x1 convolution.
"""

from search_spaces.compression import _dense  # noqa: F401  (registers "dense")
from search_spaces.compression._base import BaseCompressedLinear, CompressedConv1x1, kaiming_uniform_
from search_spaces.compression._dense import DenseLinear
from search_spaces.compression._registry import compression_methods, make_linear, register_compression

__all__ = [
    "BaseCompressedLinear",
    "CompressedConv1x1",
    "DenseLinear",
    "compression_methods",
    "kaiming_uniform_",
    "make_linear",
    "register_compression",
]
