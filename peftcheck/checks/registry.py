"""The check registry: named checks, their parameter models, and the Measurement they return."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftcheck.errors import SuiteError

if TYPE_CHECKING:
    from peftcheck.context import CheckContext
    from peftcheck.spec import LoadedSuite

__all__ = [
    "CheckParams",
    "XfailSpec",
    "Measurement",
    "NotApplicable",
    "Check",
    "CHECKS",
    "register_check",
    "get_check",
    "validate_expectations",
    "split_params",
]

Outcome = Literal["passed", "failed", "skipped", "error", "xfailed", "xpassed"]


class CheckParams(BaseModel):
    """Base of every check's parameters: unknown keys are errors.

    ``method_fields`` names the fields whose values are other methods of the suite (a name or a
    list of names; ``base`` stands for the base model): validation rejects names the suite lacks."""

    model_config = ConfigDict(extra="forbid")
    method_fields: ClassVar[tuple[str, ...]] = ()

    def named_methods(self) -> dict[str, list[str]]:
        """Field -> the method names it holds."""
        named = {}
        for field in self.method_fields:
            value = getattr(self, field)
            if value is not None:
                named[field] = [value] if isinstance(value, str) else list(value)
        return named


class XfailSpec(BaseModel):
    """A known failure: the check is expected to fail (strictly) while `when` holds."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="Why it fails: the upstream bug, with a link or issue number.")
    when: dict[str, str] = Field(
        default_factory=dict,
        description="Package -> version specifier (e.g. peft: '>=0.21,<0.22'); all must hold.",
    )
    cpu_flags: list[str] = Field(
        default_factory=list,
        description="CPU feature flags, as Linux's /proc/cpuinfo names them (e.g. avx512_bf16), that "
        "must all be present: for bugs in a kernel only some CPUs run. Never holds where the flags "
        "cannot be read.",
    )
    strict: bool = Field(True, description="An unexpected pass fails the item.")

    def installed(self) -> dict[str, str | None]:
        """Package -> its installed version (None where it is not installed), for ``when``'s packages."""
        from importlib import metadata

        versions: dict[str, str | None] = {}
        for package in self.when:
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                versions[package] = None
        return versions

    def applies(self) -> bool:
        """Whether the installed versions and this machine's CPU match ``when`` and ``cpu_flags``."""
        from packaging.specifiers import SpecifierSet

        from peftcheck.record import cpu_flags

        for package, version in self.installed().items():
            if version is None or version not in SpecifierSet(self.when[package], prereleases=True):
                return False
        return set(self.cpu_flags) <= cpu_flags()

    def closing(self) -> str:
        """What an unexpected pass means for the range: the ``when`` that closes it below the
        versions installed now (issue 24: a range stays open until a fixed release is seen)."""
        installed = self.installed()
        if not installed:
            return "no version range to close: the finding holds unconditionally; remove the xfail once fixed"
        closed = ", ".join(f'{package}: "{spec},<{installed[package]}"' for package, spec in self.when.items())
        here = ", ".join(f"{package} {version}" for package, version in installed.items())
        return (f"an unexpected pass with {here} means fixed upstream: close the range at the release that "
                f"fixed it, e.g. when: {{{closed}}} (keep only the package whose release fixed it)")

    def conditions(self) -> list[str]:
        """``peft>=0.21.2``, ``cpu:avx512_bf16``: what the finding is keyed to."""
        return [f"{k}{v}" for k, v in self.when.items()] + [f"cpu:{f}" for f in self.cpu_flags]

    def describe(self) -> str:
        """The reason with the conditions it holds under, as pytest shows it."""
        conditions = self.conditions()
        return self.reason + (f" [{', '.join(conditions)}]" if conditions else "")

    def mark(self, raises: type[BaseException] | tuple[type[BaseException], ...] | None = None) -> Any:
        """This finding as a strict pytest xfail mark for a plain test (a reproduction in tests/);
        its reason ends with what an unexpected pass means for the range."""
        import pytest

        reason = f"{self.describe()}; {self.closing()}" if self.when else self.describe()
        return pytest.mark.xfail(self.applies(), reason=reason, strict=self.strict, raises=raises)


@dataclasses.dataclass
class Measurement:
    """What one check measured: the value, the bound it was held to, and whether it held."""

    passed: bool
    value: float | None
    bound: str | None
    message: str
    unit: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    # name -> {"value", "unit"}: what the check measured besides ``value``; the Session adds them
    # to the method's record, so no check writes into a shared dict (issue 14)
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # generated texts
    from_cache: bool = False  # replayed from the check cache, not measured in this run (issue 14)


class NotApplicable(Exception):
    """Raised by a check that does not apply to a method; the item is skipped with the reason."""


@dataclasses.dataclass(frozen=True)
class Check:
    """A registered check: a name, a parameter model and a function over a CheckContext."""

    name: str
    params: type[CheckParams]
    func: Callable[["CheckContext", Any], Measurement]
    description: str
    needs_training: bool = False
    resource: bool = False  # measures this machine (time, memory): never served from a cache


    def run(self, ctx: "CheckContext", params: CheckParams) -> Measurement:
        """The check's Measurement, with the metrics and samples it put on ``ctx``."""
        # one place for every check that measures training (issue 15): an artifact was trained elsewhere
        if self.needs_training and getattr(ctx.spec, "adapter", None) is not None:
            raise NotApplicable(
                f"{self.name} measures peftcheck's own training run; methods.{ctx.method} is a saved adapter "
                "(artifact mode), trained elsewhere"
            )
        cache, key = self._cache_key(ctx, params)
        if key is not None and (hit := cache.lookup(key)) is not None:
            return Measurement(**hit, from_cache=True)
        measurement = self.func(ctx, params)
        measurement.metrics = {**ctx.metrics, **measurement.metrics}
        measurement.samples = measurement.samples or list(ctx.samples)
        from peftcheck.check_cache import UNCACHED_READS

        if key is not None and not ctx.reads & set(UNCACHED_READS):
            # what a hit will replay, so this run's record is the one the next run reads
            replayed = [f.name for f in dataclasses.fields(measurement) if f.name != "from_cache"]
            stored = cache.store(key, {f: getattr(measurement, f) for f in replayed})
            if stored is not None:
                measurement.details, measurement.metrics, measurement.samples = (
                    stored["details"], stored["metrics"], stored["samples"]
                )
        return measurement

    def _cache_key(self, ctx: "CheckContext", params: CheckParams) -> tuple[Any, dict[str, Any] | None]:
        """The check cache and this measurement's key there, or (None, None) where it is not reused:
        a resource check, the cache off, or an artifact that is not in the artifact cache."""
        cache = getattr(ctx.pipeline, "cache", None)
        if self.resource or cache is None or cache.mode == "off":
            return None, None
        try:
            record = ctx.artifact().record
        except Exception:  # noqa: BLE001 - the check itself meets the error (or skips first)
            return None, None
        entry = record.get("cache") or {}
        if not (record.get("from_cache") or entry.get("stored")) or not entry.get("key"):
            return None, None
        from peftcheck.check_cache import CheckCache

        checks = CheckCache(cache)
        return checks, checks.key(ctx, self, params, entry["key"])


CHECKS: dict[str, Check] = {}


def register_check(
    name: str, *, params: type[CheckParams] = CheckParams, needs_training: bool = False, resource: bool = False
) -> Callable[[Callable[..., Measurement]], Callable[..., Measurement]]:
    """Register ``func(ctx, params) -> Measurement`` under ``name``; ``needs_training``: the check
    measures peftcheck's training run (or rebuilds the method from its config), so it is not
    applicable to a saved adapter (artifact mode); ``resource``: it measures this machine (time,
    memory), so its measurement is never served from the check cache."""
    if not name.isidentifier():
        raise ValueError(f"check name {name!r} must be an identifier")

    def decorate(func: Callable[..., Measurement]) -> Callable[..., Measurement]:
        known = CHECKS.get(name)
        same = known is not None and (known.func.__module__, known.func.__qualname__) == (
            func.__module__,
            func.__qualname__,
        )  # the same function re-imported (pytester's in-process runs reload modules)
        if known is not None and not same:
            raise ValueError(f"check {name!r} is already registered by {CHECKS[name].func!r}")
        doc = (func.__doc__ or "").strip().splitlines()
        CHECKS[name] = Check(name, params, func, doc[0] if doc else "", needs_training, resource)
        return func

    return decorate


def _reset() -> dict[str, Check]:
    """Empty the registry (tests only); returns what was there so it can be restored."""
    saved = dict(CHECKS)
    CHECKS.clear()
    return saved


def get_check(name: str) -> Check:
    try:
        return CHECKS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, CHECKS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known checks: {', '.join(sorted(CHECKS))}"
        raise SuiteError(f"unknown check {name!r}", hint=hint) from None


def split_params(raw: dict[str, Any]) -> tuple[dict[str, Any], XfailSpec | None]:
    """Separate the common `xfail` key from a check's own parameters."""
    raw = dict(raw)
    xfail = raw.pop("xfail", None)
    if xfail is None:
        return raw, None
    if isinstance(xfail, str):
        xfail = {"reason": xfail}
    return raw, XfailSpec.model_validate(xfail)


def parse_params(check: Check, raw: dict[str, Any]) -> tuple[CheckParams, XfailSpec | None]:
    own, xfail = split_params(raw)
    return check.params.model_validate(own), xfail


def validate_expectations(loaded: "LoadedSuite") -> None:
    """Every check named by the suite exists and its parameters validate."""
    spec = loaded.spec
    places = [("expect",), *(("methods", m, "expect") for m in spec.methods)]
    for place in places:
        source = spec.expect if len(place) == 1 else spec.methods[place[1]].expect
        for name, raw in source.items():
            field = ".".join((*place, name))
            line = loaded.line_of(*place, name)
            try:
                check = get_check(name)
            except SuiteError as exc:
                raise SuiteError(exc.message, file=loaded.path, line=line, field=field, hint=exc.hint) from None
            if not isinstance(raw, dict):
                continue
            try:
                parse_params(check, raw)
            except ValidationError as exc:
                item = exc.errors()[0]
                sub = ".".join(str(p) for p in item["loc"])
                message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
                if "input" in item and item["type"] not in ("extra_forbidden", "missing"):
                    message = f"got {item['input']!r}, {message}"
                fields = CHECKS[name].params.model_fields
                raise SuiteError(
                    message,
                    file=loaded.path,
                    line=loaded.line_of(*place, name, *item["loc"]) or line,
                    field=f"{field}.{sub}" if sub else field,
                    hint=f"{name} accepts: {', '.join([*fields, 'xfail']) or 'xfail'}",
                ) from None
    for method in spec.methods:  # a method's fields merged over the suite's must still agree
        for name, raw in spec.expectations(method).items():
            try:
                parsed, _ = parse_params(get_check(name), raw)
            except ValidationError as exc:
                place = ("methods", method, "expect", name)
                raise SuiteError(
                    f"merged over expect.{name}: {exc.errors()[0]['msg']}", file=loaded.path,
                    line=loaded.line_of(*place) or loaded.line_of("expect", name), field=".".join(place),
                ) from None
            for key, names in parsed.named_methods().items():
                wrong = [n for n in names if n not in spec.methods and n != "base"]
                if wrong:
                    place = ("methods", method, "expect", name) if name in spec.methods[method].expect else ("expect", name)
                    raise SuiteError(
                        f"got {wrong}, not a method of this suite", file=loaded.path,
                        line=loaded.line_of(*place, key) or loaded.line_of(*place), field=".".join((*place, key)),
                        hint=f"methods: {', '.join(sorted(spec.methods))}",
                    )
