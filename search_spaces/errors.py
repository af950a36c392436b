"""Errors of the search-space package."""

from __future__ import annotations


class SearchSpaceError(Exception):
    """Root of all errors raised by search_spaces."""


class InvalidCompressionError(SearchSpaceError, ValueError):
    """A compression method or knob that cannot apply to the layer; names the field."""
