"""Registry of compression methods: name -> factory of a BaseCompressedLinear."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces.compression._base import BaseCompressedLinear
from search_spaces.errors import InvalidCompressionError

LinearFactory = Callable[..., BaseCompressedLinear]
_METHODS: dict[str, LinearFactory] = {}


def register_compression(name: str) -> Callable[[LinearFactory], LinearFactory]:
    """Class decorator: register a method under `name`; registering a name twice raises."""

    def decorate(factory: LinearFactory) -> LinearFactory:
        if name in _METHODS:
            raise InvalidCompressionError(f"compression method {name!r} is already registered")
        _METHODS[name] = factory
        return factory

    return decorate


def compression_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


def make_linear(
    method: str, in_features: int, out_features: int, bias: bool = True, **knobs: Any
) -> BaseCompressedLinear:
    """A compressed linear map built by method `method` with its knobs (rank, density, ...)."""
    if method not in _METHODS:
        raise InvalidCompressionError(
            f"compression method {method!r} is unknown; valid: {', '.join(compression_methods())}"
        )
    try:
        return _METHODS[method](in_features, out_features, bias=bias, **knobs)
    except TypeError as exc:
        raise InvalidCompressionError(f"compression method {method!r}: {exc}") from exc
