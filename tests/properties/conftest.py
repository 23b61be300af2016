"""Skip the property tests, with a warning, where the ML stack or hypothesis is not installed."""

from __future__ import annotations

import importlib.util
import warnings

_NEEDED = ("hypothesis", "torch", "transformers", "peft")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]

if _MISSING:
    collect_ignore_glob = ["test_*.py"]
    warnings.warn(
        f"tests/properties skipped: {', '.join(_MISSING)} not installed "
        "(pip install 'peftcheck[ml,dev]')",
        stacklevel=1,
    )
