"""peftcheck: test parameter-efficient fine-tuning with declarative suites run by pytest.

Importing peftcheck never imports torch; the ML stack is loaded when a suite runs.
"""

from peftcheck.errors import MissingExtraError, PeftcheckError, ResolveError, SuiteError

__version__ = "0.1.0"

__all__ = ["PeftcheckError", "SuiteError", "ResolveError", "MissingExtraError", "__version__"]
