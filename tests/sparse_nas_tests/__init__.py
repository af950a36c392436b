"""Tests of the sparse_nas package."""
