"""Checks: named functions over a trained method that return a Measurement."""

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
