"""Model families (search spaces), one per file, registered by a decorator at its bottom."""

from search_spaces.families._base import (
    COST_METRICS,
    BaseSearchSpace,
    InvalidSearchSpaceError,
    OptionSpec,
    get_search_space,
    iter_search_spaces,
    register_search_space,
    search_space_class,
    search_space_names,
    suggest,
)
from search_spaces.families._knobs import METHODS, make_compressed_linear
from search_spaces.families._padding import same_conv_padding, same_output_size, same_padding

# Each family registers itself on import (timm style: one file per family).
from search_spaces.families import sparse_cnn  # noqa: F401  isort: skip
from search_spaces.families import mbv2  # noqa: F401  isort: skip
from search_spaces.families import rnn  # noqa: F401  isort: skip
from search_spaces.families import ds_cnn  # noqa: F401  isort: skip

__all__ = [
    "COST_METRICS",
    "METHODS",
    "BaseSearchSpace",
    "InvalidSearchSpaceError",
    "OptionSpec",
    "get_search_space",
    "iter_search_spaces",
    "make_compressed_linear",
    "register_search_space",
    "same_conv_padding",
    "same_output_size",
    "same_padding",
    "search_space_class",
    "search_space_names",
    "suggest",
]
