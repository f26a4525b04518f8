# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Docstring conventions: pep257 with ament's configuration."""
from child_process import run_linter
import pytest


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    proc = run_linter('ament_pep257.main')
    assert proc.returncode == 0, 'docstring style errors:\n' + proc.stdout + proc.stderr
