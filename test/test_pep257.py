# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Docstring conventions: pep257 with ament's configuration."""
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ['ldka_ros', 'test', 'launch', 'scripts', 'setup.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    proc = subprocess.run(
        [sys.executable, '-m', 'ament_pep257.main', *LINTED],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, 'docstring style errors:\n' + proc.stdout + proc.stderr
