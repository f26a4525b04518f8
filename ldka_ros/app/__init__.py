"""
The application layer: what the project does with its core pieces.

``job`` is the learning job (labelled frames in, a published model version out) that the
learner node runs as a child process; ``demo`` is the one-command demo. Modules here may
import the core packages (``learning``, ``inference``, ``registry``, ``imaging``,
``sim``); no core module imports this package (test/test_layers.py checks it).
"""
