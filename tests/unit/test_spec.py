"""Suite loading: valid suites, and a located SuiteError for each kind of mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import tiny_suite
from peftcheck.errors import SuiteError
from peftcheck.spec import json_schema
from peftcheck.loader import load_suite_text

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj"]}


def text(suite: dict) -> str:
    return yaml.safe_dump(suite, sort_keys=False)


def test_expectations_merge_suite_and_method() -> None:
    suite = tiny_suite(
        {"a": LORA, "b": {**LORA, "expect": {"trainable_ratio": {"max": 0.5}, "base_frozen": False}}},
        expect={"trainable_ratio": {"max": 0.1}, "base_frozen": None},
    )
    loaded = load_suite_text(text(suite))
    assert loaded.spec.expectations("a") == {"trainable_ratio": {"max": 0.1}, "base_frozen": {}}
    assert loaded.spec.expectations("b") == {"trainable_ratio": {"max": 0.5}}


def test_method_expectation_merges_field_by_field_over_the_suites() -> None:
    # issue 17: an xfail-only override used to replace the suite's bounds with the defaults
    xfail = {"reason": "known", "when": {"peft": ">=0"}}
    suite = tiny_suite(
        {
            "xfail_only": {**LORA, "expect": {"loss_decrease": {"xfail": xfail}}},
            "one_bound": {**LORA, "expect": {"loss_decrease": {"window": 2}}},
            "empty": {**LORA, "expect": {"loss_decrease": {}}},
            "off": {**LORA, "expect": {"loss_decrease": False}},
        },
        expect={"loss_decrease": {"min_relative": 0.005, "window": 4}},
    )
    spec = load_suite_text(text(suite)).spec
    assert spec.expectations("xfail_only")["loss_decrease"] == {"min_relative": 0.005, "window": 4, "xfail": xfail}
    assert spec.expectations("one_bound")["loss_decrease"] == {"min_relative": 0.005, "window": 2}
    assert spec.expectations("empty")["loss_decrease"] == {"min_relative": 0.005, "window": 4}
    assert "loss_decrease" not in spec.expectations("off")


def test_xfail_only_override_keeps_the_suites_bound_on_the_item() -> None:
    from peftcheck.checks.registry import get_check, parse_params

    suite = tiny_suite(
        {"q": {**LORA, "expect": {"loss_decrease": {"xfail": {"reason": "r", "cpu_flags": ["no_such_flag"]}}}}},
        expect={"loss_decrease": {"min_relative": 0.005}},
    )
    spec = load_suite_text(text(suite)).spec
    params, xfail = parse_params(get_check("loss_decrease"), spec.expectations("q")["loss_decrease"])
    assert params.min_relative == 0.005 and xfail is not None and not xfail.applies()


def test_schema_says_method_expectations_merge() -> None:
    props = json_schema()["$defs"]["MethodSpec"]["properties"]
    assert "field by field" in props["expect"]["description"]


def test_method_train_overrides() -> None:
    suite = tiny_suite({"a": {**LORA, "train": {"learning_rate": 0.5}}})
    args = load_suite_text(text(suite)).spec.train_args("a")
    assert args["learning_rate"] == 0.5 and args["max_steps"] == 8


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("suite: [unclosed", "invalid YAML"),
        ("- a\n- b\n", "a suite is a mapping"),
        ("suite: x\n", "<string>:1 model: required key is missing"),
    ],
)
def test_malformed_files(yaml_text: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        load_suite_text(yaml_text)


def test_error_names_file_line_and_field() -> None:
    suite = tiny_suite({"lora": LORA})
    suite["train"]["per_device_train_batch_size"] = 0
    with pytest.raises(SuiteError) as info:
        load_suite_text(text(suite), path="suites/x.yaml")
    err = info.value
    assert err.file == "suites/x.yaml" and err.field == "train.per_device_train_batch_size"
    assert text(suite).splitlines()[err.line - 1].strip().startswith("per_device_train_batch_size")
    assert "got 0" in str(err)


def test_unknown_training_argument() -> None:
    suite = tiny_suite({"lora": LORA})
    suite["train"]["lerning_rate"] = 1
    with pytest.raises(SuiteError, match=r"train.lerning_rate: unknown TrainingArguments name") as info:
        load_suite_text(text(suite))
    assert info.value.line is not None and "learning_rate" in (info.value.hint or "")


def test_check_params_are_validated() -> None:
    suite = tiny_suite({"lora": LORA}, expect={"trainable_ratio": {"max": -1}})
    with pytest.raises(SuiteError, match="expect.trainable_ratio.max: got -1"):
        load_suite_text(text(suite))


@pytest.mark.parametrize(
    ("where", "check", "params", "field"),
    [
        ("method", "co_resident", {"adapters": ["lora", "lora_b"]}, "methods.ia3.expect.co_resident.adapters"),
        ("suite", "throughput", {"reference": "lora_b", "min_ratio": 0.5}, "expect.throughput.reference"),
        ("suite", "memory_footprint", {"relative_to": "lora_b", "max_ratio": 2}, "expect.memory_footprint.relative_to"),
    ],
)
def test_a_check_naming_a_method_the_suite_lacks_is_located(where: str, check: str, params: dict, field: str) -> None:
    def suite_with(params: dict) -> dict:
        methods = {"lora": LORA, "ia3": {"peft": "IA3Config", "target_modules": ["k_proj"], "feedforward_modules": []}}
        if where == "method":
            methods["ia3"]["expect"] = {check: params}
            return tiny_suite(methods)
        return tiny_suite(methods, expect={check: params})

    wrong = suite_with(params)
    with pytest.raises(SuiteError) as info:
        load_suite_text(text(wrong), path="suites/x.yaml")
    err = info.value
    assert err.field == field and "got ['lora_b'], not a method of this suite" in str(err)
    assert text(wrong).splitlines()[err.line - 1].strip().startswith(field.rsplit(".", 1)[1])
    fixed = {k: ["lora"] if isinstance(v, list) else "lora" if v == "lora_b" else v for k, v in params.items()}
    load_suite_text(text(suite_with(fixed)))  # the same suite naming methods it has loads


def test_xfail_is_accepted_on_any_check() -> None:
    suite = tiny_suite({"lora": LORA}, expect={"target_coverage": {"xfail": {"reason": "r", "when": {"peft": "<99"}}}})
    assert load_suite_text(text(suite)).spec.expectations("lora")["target_coverage"]["xfail"]["reason"] == "r"


def test_xfail_applies_only_while_versions_and_cpu_flags_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    import peftcheck.record
    from peftcheck.checks import XfailSpec

    monkeypatch.setattr(peftcheck.record, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    bf16 = XfailSpec(reason="packed nf4", when={"pytest": ">=1"}, cpu_flags=["avx512_bf16"])
    assert bf16.applies()
    assert bf16.describe() == "packed nf4 [pytest>=1, cpu:avx512_bf16]"
    assert not bf16.model_copy(update={"when": {"pytest": "<1"}}).applies()
    assert not bf16.model_copy(update={"when": {"no-such-package-xyz": ">=0"}}).applies()
    assert not bf16.model_copy(update={"cpu_flags": ["avx512_bf16", "amx_bf16"]}).applies()
    monkeypatch.setattr(peftcheck.record, "cpu_flags", lambda: frozenset())  # flags unreadable
    assert not bf16.applies()
    assert XfailSpec(reason="always").applies()


def test_cpu_flags_are_read_from_the_first_processor(tmp_path: Path) -> None:
    from peftcheck.record import _cpuinfo

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert _cpuinfo(info)["flags"].split() == ["fpu", "avx2", "avx512_bf16"]
    assert _cpuinfo(info)["model name"] == "Xeon"
    assert _cpuinfo(tmp_path / "missing") == {}


def test_schema_lists_every_field_with_a_description() -> None:
    schema = json_schema()
    for name, definition in schema["$defs"].items():
        for field, prop in definition.get("properties", {}).items():
            assert prop.get("description") or "$ref" in prop or "allOf" in prop, (name, field)


def _documented_checks(readme: str) -> set[str]:
    """Check names in the first column of the README's check tables."""
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", readme, flags=re.MULTILINE))


def test_readme_documents_every_registered_check_and_no_other() -> None:
    import peftcheck.checks.builtin  # noqa: F401  (registers the built-in checks)
    from peftcheck.checks import CHECKS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = _documented_checks(readme)
    assert set(CHECKS) - documented == set(), "checks without a README row"
    assert documented - set(CHECKS) - _metric_rows(readme) == set(), "README rows for checks that do not exist"


def _metric_rows(readme: str) -> set[str]:
    """The baseline metric table's rows also start with a backticked name: they are metrics."""
    section = readme.split("Every metric has a direction and a tolerance", 1)[1].split("\n\n", 2)[1]
    return _documented_checks(section)



def test_an_unexpected_pass_names_the_version_to_close_the_range_at() -> None:
    """Issue 24: a finding's range stays open, and its XPASS says where to close it."""
    from importlib import metadata

    from peftcheck.checks import XfailSpec

    here = metadata.version("pytest")
    spec = XfailSpec(reason="known", when={"pytest": ">=1"})
    assert f'when: {{pytest: ">=1,<{here}"}}' in spec.closing() and f"pytest {here}" in spec.closing()
    assert spec.mark().kwargs["reason"].startswith("known [pytest>=1]; an unexpected pass with pytest")
    assert "no version range" in XfailSpec(reason="always").closing()
