"""The suite loader raises nothing but SuiteError on any input, and valid suites round-trip."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings

import peftcheck.spec
from peftcheck.cli import main
from peftcheck.errors import SuiteError
from peftcheck.spec import SuiteSpec, json_schema
from peftcheck.loader import load_suite_text

from . import _suite_strategies as ss
from ._checks import run_planted


def _checks() -> list[str]:
    try:
        return ss.builtin_checks()
    except ImportError as exc:  # the check modules are being written alongside this file
        warnings.warn(f"built-in checks do not import ({exc}); suites are generated without `expect`")
        return []


CHECKS = _checks()
# Loading a suite takes milliseconds, not a model build: ten times the profile's examples.
FUZZ = settings(max_examples=10 * settings.default.max_examples)


def loads_or_suite_error(text: str) -> None:
    try:
        load_suite_text(text, path="fuzz.yaml")
    except SuiteError as exc:
        assert str(exc).startswith("fuzz.yaml"), f"a SuiteError that does not name the file: {exc}"


@FUZZ
@given(ss.suite_shaped(CHECKS))
@example({"suite": "s", "model": "m", "data": {"dataset": "d"}, "methods": {"m": {"peft": "X"}}, "train": {1: 2}})
@example([1, 2])
@example(None)
def test_suite_shaped_documents_raise_only_suite_error(doc: Any) -> None:
    loads_or_suite_error(ss.dump(doc))


@FUZZ
@given(ss.yaml_texts(aliases=False, tags=False))
@example("suite: [\n")
@example("\t")
@example("? [a, b]\n: 1\n")
def test_yaml_text_raises_only_suite_error(text: str) -> None:
    loads_or_suite_error(text)


# Found by this test: a recursive alias used to raise RecursionError (fixed in spec.py).
@given(ss.yaml_texts(aliases=True, tags=False))
@example("a: &x [*x]\n")  # minimal counterexample, found by this test
@example("a: &a [1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n")
def test_yaml_aliases_raise_only_suite_error(text: str) -> None:
    loads_or_suite_error(text)


# Found by this test: PyYAML raises ValueError/IndexError/KeyError on malformed tagged
# scalars (yaml/pyyaml#933, #898); spec.py now turns them into SuiteError.
@given(ss.yaml_texts(aliases=False, tags=True))
@example("!!int ")  # minimal counterexample, found by this test: IndexError
def test_yaml_tags_raise_only_suite_error(text: str) -> None:
    loads_or_suite_error(text)


@settings(max_examples=2 * settings.default.max_examples)
@given(ss.suite_shaped(CHECKS))
@example({"suite": "s", "model": "tiny-opt", "data": {"dataset": "nowhere.jsonl"}, "methods": {"m": {"peft": "NoSuchConfig"}}})
def test_validate_command_exits_with_a_status(doc: Any) -> None:
    validate_exits_with_a_status(doc)


def validate_exits_with_a_status(doc: Any) -> None:
    """`peftcheck validate FILE` goes further than the loader (methods, model and data are
    resolved) and must still end in an exit status, never a traceback."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "suite.yaml")
        path.write_text(ss.dump(doc), encoding="utf-8")
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            status = main(["validate", str(path)])
    assert status in (0, 1, 2), f"exit status {status!r}: {output.getvalue()}"


def _subset_equal(generated: Any, loaded: Any, where: str = "") -> None:
    """Every value the document gave is the value the loaded suite holds (defaults may add more)."""
    if isinstance(generated, dict):
        assert isinstance(loaded, dict), f"{where}: {loaded!r} is not a mapping"
        for key, value in generated.items():
            assert key in loaded, f"{where}.{key} was dropped"
            _subset_equal(value, loaded[key], f"{where}.{key}")
    else:
        assert generated == loaded, f"{where}: wrote {generated!r}, loaded {loaded!r}"


def roundtrip(doc: dict[str, Any]) -> None:
    first = load_suite_text(ss.dump(doc), path="generated.yaml").spec
    dumped = first.model_dump(mode="json")
    _subset_equal(doc, dumped, "suite")
    second = load_suite_text(ss.dump(dumped), path="dumped.yaml").spec
    assert second == first, "dump → load changed the suite"
    properties = json_schema()["properties"]
    assert set(dumped) <= set(properties), f"schema lacks {sorted(set(dumped) - set(properties))}"
    assert set(json_schema()["required"]) <= set(doc), "a generated suite lacks a required key"


@FUZZ
@given(ss.valid_suites(CHECKS))
def test_valid_suites_roundtrip_through_the_schema(doc: dict[str, Any]) -> None:
    roundtrip(doc)


# --- planted defects ------------------------------------------------------------------------


def test_planted_crash_on_validation_error_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error formatter that assumes every pydantic error has a `ctx` (KeyError otherwise)."""
    monkeypatch.setattr(peftcheck.spec, "_first_error", lambda exc: exc.errors()[0]["ctx"]["missing"])
    with pytest.raises((KeyError, TypeError)):
        run_planted(lambda doc: loads_or_suite_error(ss.dump(doc)), ss.suite_shaped(CHECKS))


def test_planted_dropped_field_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader that loses the suite's `markers` on the way in."""
    original = SuiteSpec.model_validate.__func__  # type: ignore[attr-defined]

    def lossy(cls: type[SuiteSpec], data: Any, **kwargs: Any) -> SuiteSpec:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "markers"}
        return original(cls, data, **kwargs)

    monkeypatch.setattr(SuiteSpec, "model_validate", classmethod(lossy))
    strategy = ss.valid_suites(CHECKS).map(lambda d: {**d, "markers": ["slow"]})
    with pytest.raises(AssertionError, match="markers"):
        run_planted(roundtrip, strategy)


def test_planted_crash_in_validate_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method resolver that raises TypeError on config keywords it does not know."""
    import peftcheck.methods

    def strict(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("__init__() got an unexpected keyword argument 'r'")

    monkeypatch.setattr(peftcheck.methods, "build_config", strict)
    with pytest.raises(TypeError, match="unexpected keyword"):
        run_planted(validate_exits_with_a_status, ss.valid_suites(CHECKS))
