"""Failing items grouped by their cause, so that a broken run reads as one error, not hundreds (issue 26).

The one grouping rule behind the HTML report, the Markdown summary and the terminal summary:

- an item that errored (outcome ``error``) is keyed by its message alone, whatever its check: one
  broken import or registration errors every item the same way;
- an item whose check failed (outcome ``failed``: a measured value against a bound) is keyed by its
  check and its message with every number kept: its figures are its own, so two measurements
  merge only when they read the same, never because they differ in their figures only.

Both keys drop what differs between machines and runs only: absolute paths (pytest's and other
temporary directories, site-packages, this checkout), line numbers after a path or in a traceback,
and memory addresses. Numbers in an error's message are kept too: there they are a shape, a size
or an index, part of what went wrong.

Groups come in the order of their first item: in a broken run the first error is the likeliest
cause of the others (a half-done import re-registers an operator for every later item).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["BAD", "Item", "Cause", "Group", "elide", "cause", "group", "summary_lines"]

BAD: tuple[str, ...] = ("failed", "error")
MAX_TERMINAL = 5  # groups named in the terminal summary; the report has every one
MAX_LINE = 320  # characters of a message in the terminal summary: a registration error names its operator first

T = TypeVar("T")

# an absolute POSIX path (not inside a word, a URL or a relative path), with its line numbers
_PATH = re.compile(r"(?<![\w.~/:-])/[^\s\"'`:,;()<>\[\]{}|]+(?::\d+)*")
_TRACEBACK_LINE = re.compile(r'(", line )\d+')
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_TEMPORARY = ("/tmp", "/var/tmp", "/var/folders", "/private/var/folders", "/private/tmp", "/dev/shm")
_PACKAGES = ("/site-packages/", "/dist-packages/")


class Item(Protocol):
    """A check item's result: the report's ``Cell`` and the core's ``CheckRecord`` both are one."""

    @property
    def outcome(self) -> str: ...
    @property
    def check(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def nodeid(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Cause:
    """What items of one group share."""

    outcome: str
    check: str | None  # None for an error: it spans checks
    message: str  # elided

    @property
    def noun(self) -> str:
        return "error" if self.outcome == "error" else "message"


def _path(match: re.Match[str]) -> str:
    path, colon, _ = match.group(0).partition(":")
    stop = ""
    while path.endswith(".") and len(path) > 1:  # a sentence's full stop, not the path's
        path, stop = path[:-1], stop + "."
    line = ":…" if colon else ""
    if "/pytest-of-" in path or any(path == t or path.startswith(t + "/") for t in _TEMPORARY):
        return "<tmp>" + stop  # per run and per item, its line numbers too: nothing in it names the cause
    for marker in _PACKAGES:
        if marker in path:
            return "<site-packages>/" + path.split(marker, 1)[1] + line + stop
    parts = [p for p in path.split("/") if p]
    if len(parts) > 2:  # this machine's checkout or home; /dev/null and the like stay as they are
        path = "…/" + "/".join(parts[-2:])
    return path + line + stop


def elide(message: str) -> str:
    """The message without what differs between machines and runs: paths, line numbers, addresses."""
    text = _PATH.sub(_path, message)
    text = _TRACEBACK_LINE.sub(r"\1…", text)
    return _ADDRESS.sub("0x…", text).strip()


def cause(item: Item) -> Cause | None:
    """The key of a failed or errored item (see the module's docstring); None for any other."""
    if item.outcome not in BAD:
        return None
    check = None if item.outcome == "error" else item.check
    return Cause(item.outcome, check, elide(item.message or ""))


@dataclasses.dataclass(frozen=True)
class Group(Generic[T]):
    """Entries whose items share one cause, in the order they came; one entry for anything else."""

    cause: Cause | None
    entries: tuple[T, ...]
    first: Item | None  # the first entry's item

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def single(self) -> bool:
        return len(self.entries) == 1

    @property
    def head(self) -> T:
        return self.entries[0]

    @property
    def message(self) -> str:
        return self.cause.message if self.cause else ""

    @property
    def noun(self) -> str:
        return self.cause.noun if self.cause else "message"

    def across(self, attribute: str, noun: str) -> str:
        """The entries' one value of ``attribute``, or how many different ones: "3 suites"."""
        values = list(dict.fromkeys(str(getattr(e, attribute)) for e in self.entries))
        return values[0] if len(values) == 1 else f"{len(values)} {noun}"


def group(entries: Iterable[T], item: Callable[[T], Item | None]) -> list[Group[T]]:
    """``entries`` grouped by the cause of ``item(entry)``, by first occurrence; an entry without
    an item, or whose item neither failed nor errored, is a group of its own where it stands."""
    order: list[Cause | int] = []
    found: dict[Cause | int, tuple[list[T], Item | None]] = {}
    for number, entry in enumerate(entries):
        it = item(entry)
        key: Cause | int = (cause(it) if it is not None else None) or number
        if key not in found:
            order.append(key)
            found[key] = ([], it)
        found[key][0].append(entry)
    return [Group(k if isinstance(k, Cause) else None, tuple(found[k][0]), found[k][1]) for k in order]


def _short(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def summary_lines(items: Iterable[Item], *, limit: int = MAX_TERMINAL) -> list[str]:
    """The terminal's few lines on shared causes: nothing unless two failing items share one."""
    groups = group((i for i in items if i.outcome in BAD), lambda i: i)
    shared = [g for g in groups if not g.single]
    if not shared:
        return []  # pytest's short summary already lists each failing item once
    lines = []
    for g in shared[:limit]:
        assert g.cause is not None and g.first is not None
        which = "" if g.cause.check is None else f" of check {g.cause.check}"
        lines.append(f"peftcheck: {g.count} items{which} failed with one {g.noun}: {_short(g.message)} "
                     f"(first: {g.first.nodeid or '?'})")
    if len(shared) > limit:
        lines.append(f"peftcheck: …and {len(shared) - limit} more shared causes, each grouped in the report")
    if alone := sum(g.single for g in groups):
        lines.append(f"peftcheck: {alone} other failing item(s), each with a message of its own")
    return lines
