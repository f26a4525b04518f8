# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Style: flake8 with ament's configuration (as every ament_python package runs it)."""
from ament_flake8.main import main_with_errors
import pytest

# Project sources only: build/, install/ and the venv hold generated or third-party code.
LINTED = ['ldka_ros', 'test', 'launch', 'scripts', 'setup.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    rc, errors = main_with_errors(argv=LINTED)
    assert rc == 0, 'Found %d code style errors / warnings:\n' % len(errors) + '\n'.join(errors)
