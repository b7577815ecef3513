"""mypy over the package and its scripts (``[tool.mypy]`` in pyproject.toml) as one test, so that
``make test`` runs it on one pytest-xdist worker beside the other tests instead of on one core
before them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .helpers import REPO


@pytest.mark.long
def test_the_code_type_checks():
    res = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    assert "Success: no issues found" in res.stdout
