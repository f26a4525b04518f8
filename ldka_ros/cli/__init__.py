"""The offline ``ldka`` command-line interface."""
