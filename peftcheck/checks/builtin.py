"""Imports every built-in check module so each registers itself."""

from peftcheck.checks import (  # noqa: F401
    contract,
    gradients,
    integrity,
    learning,
    merging,
    multi_adapter,
    parameters,
    persistence,
    pipelines,
    quality,
    quantization,
    regression,
    resources,
)
