"""Errors of the ``sparse_nas`` engine package."""

from __future__ import annotations


class SparseNASError(Exception):
    """Root error of the ``sparse_nas`` package: every error it raises on purpose inherits it."""
