"""Imports every built-in check module so each registers itself."""

from peftcheck.checks import (  # noqa: F401
    contract,
    learning,
    merging,
    parameters,
    persistence,
    quality,
    regression,
    resources,
)
