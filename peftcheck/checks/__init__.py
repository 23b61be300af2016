"""Checks: named functions over a trained method that return a Measurement.

The package registers the built-in checks as it loads (``builtin``), so whoever imports the
registry finds them; the registry itself imports no check (issue 13)."""

from peftcheck.checks.registry import (
    CHECKS,
    Check,
    CheckParams,
    Measurement,
    NotApplicable,
    XfailSpec,
    get_check,
    register_check,
    split_params,
    validate_expectations,
)

__all__ = [
    "CHECKS",
    "Check",
    "CheckParams",
    "Measurement",
    "NotApplicable",
    "XfailSpec",
    "get_check",
    "register_check",
    "split_params",
    "validate_expectations",
]

from peftcheck.checks import builtin  # noqa: E402,F401  (each module registers its checks on import)
