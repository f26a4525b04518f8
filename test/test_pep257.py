# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Docstring conventions: pep257 with ament's configuration."""
from ament_pep257.main import main
import pytest

# Project sources only: build/, install/ and the venv hold generated or third-party code.
LINTED = ['ldka_ros', 'test', 'launch', 'scripts', 'setup.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    rc = main(argv=LINTED)
    assert rc == 0, 'Found code style errors / warnings'
