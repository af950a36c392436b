"""Test-wide settings: one torch thread per test worker (2 cores are shared by xdist)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _pin_torch_threads() -> None:
    # Only when torch is already in use: hw_models tests must not pay for importing it.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
