"""Suites collected by pytest: ids, markers, selection, and one-line errors for bad suites."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import tiny_suite

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}


def write_suite(pytester: pytest.Pytester, name: str = "tiny", **kwargs: object) -> None:
    suite = tiny_suite(
        {"lora": LORA, "int8": {**LORA, "quantization": "int8"}},
        expect={"trainable_ratio": {"max": 0.5}, "base_frozen": {}},
        markers=["smoke"],
        **kwargs,
    )
    pytester.makefile(".yaml", **{name: yaml.safe_dump(suite, sort_keys=False)})


def test_ids_read_like_the_suite(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest("--collect-only", "-q", "--strict-markers")
    result.stdout.fnmatch_lines(
        [
            "tiny.yaml::tiny::lora::trainable_ratio",
            "tiny.yaml::tiny::lora::base_frozen",
            "tiny.yaml::tiny::int8::trainable_ratio",
            "tiny.yaml::tiny::int8::base_frozen",
        ]
    )
    assert result.ret == 0


def test_k_and_m_select(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest("--collect-only", "-q", "--strict-markers", "-m", "quant")
    result.stdout.fnmatch_lines(["tiny.yaml::tiny::int8::trainable_ratio", "*2/4 tests collected*"])
    result = pytester.runpytest("--collect-only", "-q", "--strict-markers", "-m", "smoke and not quant", "-k", "frozen")
    result.stdout.fnmatch_lines(["tiny.yaml::tiny::lora::base_frozen", "*1/4 tests collected*"])


def test_yaml_without_suite_key_is_not_collected(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", other="name: something else\n")
    assert pytester.runpytest("--collect-only", "-q").ret == pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.update(bogus=1), "tiny.yaml:23 bogus: unknown key"),
        (lambda s: s["train"].update(max_steps="many"), "tiny.yaml:* train.max_steps: got 'many'*"),
        (lambda s: s["methods"]["lora"].update(peft="LoraConfg"), "*methods.lora.peft: got 'LoraConfg'*"),
        (lambda s: s["methods"]["lora"].update(rank=4), "*methods.lora.rank: unknown argument of LoraConfig*"),
        (lambda s: s["expect"].update(merge_equivalense={}), "*expect.merge_equivalense: unknown check*"),
        (lambda s: s["data"].update(split="train[:x]"), "*data.split: got 'train?:x?'*"),
        (lambda s: s.update(model="no/such-model"), "*model: model 'no/such-model' not found; tried:*"),
        (lambda s: s["data"].update(dataset="no/such-data"), "*data.dataset: dataset 'no/such-data' not found*"),
    ],
)
def test_bad_suite_gives_one_located_message(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                             mutate: object, expected: str) -> None:
    monkeypatch.setenv("PEFTCHECK_OFFLINE", "1")
    monkeypatch.delenv("PEFTCHECK_DATA_DIR", raising=False)
    suite = tiny_suite({"lora": LORA}, expect={"trainable_ratio": {}})
    mutate(suite)  # type: ignore[operator]
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("-q", "-p", "no:peftcheck_report")
    output = result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([expected])
    assert result.ret != 0
    assert "Traceback" not in output and 'File "' not in output, output


def test_a_suite_that_checks_nothing_is_a_collection_error(pytester: pytest.Pytester) -> None:
    suite = tiny_suite({"lora": LORA}, expect={"trainable_ratio": False})
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("-q", "-p", "no:peftcheck_report")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, not "no tests ran" (rc 5; issue 26)
    result.stdout.fnmatch_lines(["tiny.yaml:* expect: the suite yields no check item: every check it names is "
                                 "turned off (false) for every method"])  # fmt: skip
    assert "Traceback" not in result.stdout.str()


def test_run_writes_records(pytester: pytest.Pytester) -> None:
    suite = tiny_suite({"lora": LORA}, expect={"trainable_ratio": {"max": 0.5}, "loss_decrease": {"min_relative": 0.9}})
    suite["train"]["max_steps"] = 3
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("--peftcheck-results", "out/r.jsonl", "-p", "no:peftcheck_report")
    result.assert_outcomes(passed=1, failed=1)
    records = [json.loads(line) for line in (pytester.path / "out" / "r.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "session" and kinds[-1] == "end" and kinds.count("method") == 1
    checks = {r["check"]: r for r in records if r["kind"] == "check"}
    assert checks["trainable_ratio"]["outcome"] == "passed" and checks["trainable_ratio"]["value"] > 0
    assert checks["loss_decrease"]["outcome"] == "failed" and checks["loss_decrease"]["bound"] == ">= 0.9"
    method = next(r for r in records if r["kind"] == "method")
    assert len(method["loss_curve"]) == 3 and method["env"]["versions"]["peft"]
    assert method["model"] == {"ref": "tiny-opt", "source": method["model"]["source"], "real": False}


def test_failing_method_leaves_others_running(pytester: pytest.Pytester) -> None:
    broken = {**LORA, "target_modules": ["nothing_matches"]}
    suite = tiny_suite({"broken": broken, "lora": LORA}, expect={"trainable_ratio": {"max": 0.5}})
    suite["train"]["max_steps"] = 2
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("-p", "no:peftcheck_report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*methods.broken: peft could not apply the method*"])


def test_a_reference_whose_methods_all_skip_is_not_trained(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 17: the adapters suite trained a LoRA reference for AdapterHub methods that all skip
    import peftcheck.methods
    from peftcheck.errors import MissingExtraError

    real = peftcheck.methods.build_config

    def planted(method: object, *, name: str, **kwargs: object) -> object:
        if name == "needs_extra":  # stands for a backend whose library is not installed
            raise MissingExtraError("somelib", "someextra")
        return real(method, name=name, **kwargs)

    monkeypatch.setattr(peftcheck.methods, "build_config", planted)
    suite = tiny_suite(
        {"needs_extra": LORA, "ref": {**LORA, "reference_for": ["needs_extra"]},
         "ref_of_lora": {**LORA, "reference_for": ["lora"]}, "lora": LORA},
        expect={"trainable_ratio": {"max": 0.5}},
    )  # fmt: skip
    suite["train"]["max_steps"] = 1
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("-rs", "-p", "no:peftcheck_report")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines([
        "*methods.needs_extra: somelib is not installed*",
        "*methods.ref: a reference for needs_extra, which do not run here (somelib is not installed*",
    ])  # fmt: skip
    assert "training tiny/ref " not in result.stdout.str() and "training tiny/ref_of_lora " in result.stdout.str()


def test_reference_for_names_other_methods(pytester: pytest.Pytester) -> None:
    suite = tiny_suite({"lora": {**LORA, "reference_for": ["lora", "nope"]}}, expect={"trainable_ratio": {}})
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("-q", "-p", "no:peftcheck_report")
    assert "methods.lora.reference_for: got ['lora', 'nope'], reference_for names other methods" in result.stdout.str()
    assert result.ret != 0
