"""Imports every built-in check module so each registers itself."""

from peftcheck.checks import learning, merging, parameters, persistence, quality, regression, resources  # noqa: F401
