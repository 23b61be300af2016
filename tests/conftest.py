"""Hypothesis profiles for the project's tests: "ci" (default, quick) and "thorough".

Pick one with ``pytest --hypothesis-profile=thorough``; without the option "ci" is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

# The project's own tests plant defects in-process (monkeypatched training, CPU flags, kernels):
# an artifact cache would store those artifacts or serve real ones to them (issue 14). Tests of
# the cache pass --peftcheck-cache or an ArtifactCache themselves.
os.environ.setdefault("PEFTCHECK_CACHE", "off")


# Modules that register torch operators or C extensions at import: importing one of them a second
# time in one process raises (bitsandbytes: "Tried to register an operator ... multiple times").
# Optional ones are imported only where installed.
_ML_STACK = ("torch", "transformers", "peft", "datasets", "bitsandbytes", "peft.tuners.lora.bnb",
             "transformers.integrations.bitsandbytes", "trl")


def _import_ml_stack() -> None:
    for name in _ML_STACK:
        if importlib.util.find_spec(name.partition(".")[0]) is not None:
            importlib.import_module(name)


# pytester's in-process runs restore sys.modules afterwards, so whatever an inner run imported
# first is dropped and imported again by the next test; peft 0.22.0 imports bitsandbytes lazily,
# which made every test after the first in-process run that loaded it fail (issue 24).
_import_ml_stack()


def _register_profiles() -> None:
    from hypothesis import HealthCheck, Phase, settings

    # Examples build torch modules on two shared CPU cores: wall-clock deadlines would only
    # measure the neighbours' load, and a slow first example (imports) is not a bug.
    common = dict(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
        # The explain phase reruns a failure hundreds of times to annotate it: minutes here.
        phases=tuple(p for p in Phase if p is not Phase.explain),
    )
    settings.register_profile("ci", max_examples=15, stateful_step_count=12, **common)
    settings.register_profile("thorough", max_examples=300, stateful_step_count=40, **common)


# Registered at import: hypothesis's own pytest_configure loads a --hypothesis-profile by name.
_HAVE_HYPOTHESIS = importlib.util.find_spec("hypothesis") is not None
if _HAVE_HYPOTHESIS:  # else tests/properties/conftest.py skips the property tests, with a warning
    _register_profiles()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Load "ci" unless ``--hypothesis-profile`` names one (hypothesis's plugin loads that)."""
    if _HAVE_HYPOTHESIS and not config.getoption("--hypothesis-profile", default=None):
        from hypothesis import settings

        settings.load_profile("ci")
