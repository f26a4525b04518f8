# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Style: flake8 with ament's configuration (as every ament_python package runs it)."""
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Project sources only: build/, install/ and the venv hold generated or third-party code.
LINTED = ['ldka_ros', 'test', 'launch', 'scripts', 'setup.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    # A fresh interpreter: flake8 forks worker processes, and forking a pytest process
    # that already runs torch and rclpy threads can crash the workers.
    proc = subprocess.run(
        [sys.executable, '-m', 'ament_flake8.main', *LINTED],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, 'code style errors / warnings:\n' + proc.stdout + proc.stderr
