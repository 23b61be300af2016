"""Imports every built-in check module so each registers itself."""

from peftcheck.checks import learning, parameters, regression  # noqa: F401
