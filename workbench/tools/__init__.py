"""Checks that anyone can run against the package, e.g. ``python -m workbench.tools.layers``."""
