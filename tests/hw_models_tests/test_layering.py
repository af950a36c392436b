"""Layering: hw_models imports neither torch nor any higher sparse-nas package."""

from __future__ import annotations

import subprocess
import sys


def test_hw_models_imports_no_torch_and_no_higher_layer():
    code = (
        "import sys, hw_models, hw_models.reference;"
        "bad = [m for m in ('torch', 'search_spaces', 'sparse_nas', 'api', 'ray', 'botorch') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
