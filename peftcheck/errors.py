"""The exception types peftcheck raises for mistakes a user can make."""

from __future__ import annotations

__all__ = ["PeftcheckError", "SuiteError", "ResolveError", "MissingExtraError"]


class PeftcheckError(Exception):
    """Base class of every error peftcheck raises on purpose."""


class SuiteError(PeftcheckError, ValueError):
    """A suite file is wrong: bad YAML, unknown key, wrong type, unknown method or check.

    Formatted like ``suites/quotes.yaml:12 methods.lora.r: got -1, must be >= 0`` plus a hint.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        if self.field:
            where = f"{where} {self.field}" if where else self.field
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def located(self, *, file: str | None = None, line: int | None = None) -> "SuiteError":
        """A copy with the file (and line, when not already known) filled in."""
        return SuiteError(
            self.message,
            file=self.file or file,
            line=self.line or line,
            field=self.field,
            hint=self.hint,
        )


class ResolveError(SuiteError):
    """A model, dataset or method reference names nothing that can be found."""


class MissingExtraError(PeftcheckError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'peftcheck[{extra}]'")
        self.package = package
        self.extra = extra
