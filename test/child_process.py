# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Helpers for tests that run a real child process: linters, and writers killed mid-way."""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
# Project sources only: build/, install/ and the venv hold generated or third-party code.
LINTED = ['ldka_ros', 'test', 'launch', 'scripts', 'setup.py']


def run_linter(module: str) -> subprocess.CompletedProcess:
    """
    Run an ament linter (``ament_flake8.main``, ...) over the project's sources.

    A fresh interpreter: flake8 forks worker processes, and forking a pytest process
    that already runs torch and rclpy threads can crash the workers.
    """
    return subprocess.run([sys.executable, '-m', module, *LINTED], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def reap(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, wait for it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
