# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Style: flake8 with ament's configuration (as every ament_python package runs it)."""
from child_process import run_linter
import pytest


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    proc = run_linter('ament_flake8.main')
    assert proc.returncode == 0, 'code style errors / warnings:\n' + proc.stdout + proc.stderr
