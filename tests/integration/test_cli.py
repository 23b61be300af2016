"""The command line: validate, list, schema, run — exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import tiny_suite
from peftcheck.cli import main

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}


def write(tmp_path: Path, suite: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_validate_ok_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, tiny_suite({"lora": LORA}, expect={"trainable_ratio": {}}), "good.yaml")
    assert main(["validate", str(good)]) == 0
    bad = tiny_suite({"lora": {**LORA, "lora_alpah": 8}}, expect={"trainable_ratio": {"mx": 1}})
    bad_path = write(tmp_path, bad, "bad.yaml")
    assert main(["validate", str(bad_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "expect.trainable_ratio.mx: unknown key" in err


def test_validate_reports_unknown_config_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, tiny_suite({"lora": {**LORA, "lora_alpah": 8}}))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "methods.lora.lora_alpah: unknown argument of LoraConfig" in err and "lora_alpha" in err


@pytest.mark.parametrize(
    ("method", "field", "message"),
    [
        ({**LORA, "r": "eight"}, "methods.lora.r", "got 'eight', input should be a valid integer"),
        ({**LORA, "r": "8"}, "methods.lora.r", "got '8', a string where a int is wanted"),
        ({**LORA, "use_dora": "yes"}, "methods.lora.use_dora", "got 'yes', a string where a bool is wanted"),
        # tiny-opt's projections are 64 wide: RoAd's groups must divide them (found applying it to
        # the model on the meta device, without training)
        ({"peft": "RoadConfig", "group_size": 48, "target_modules": ["q_proj"]}, "methods.lora",
         "peft could not apply the method: The out_features of the base layer must be divisible by group_size (48)"),
        ({**LORA, "target_modules": ["q_prj"]}, "methods.lora", "Target modules {'q_prj'} not found in the base model"),
    ],
)  # fmt: skip
def test_validate_builds_what_it_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: dict, field: str, message: str
) -> None:
    path = write(tmp_path, tiny_suite({"lora": method}, expect={"trainable_ratio": {}}))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith(f"{path}:"))
    number = int(line.split(":")[1].split()[0])
    assert f" {field}: " in line and message in line and "Traceback" not in err
    key = field.rsplit(".", 1)[1]
    assert path.read_text().splitlines()[number - 1].strip().startswith(f"{key}:")
    good = {**method, **{"r": 8, "use_dora": True, "group_size": 32, "target_modules": ["q_proj"]}}
    good = {k: v for k, v in good.items() if k in method}
    good_suite = tiny_suite({"lora": good}, expect={"trainable_ratio": {}})
    assert main(["validate", str(write(tmp_path, good_suite, "good.yaml"))]) == 0


def test_validate_says_which_adapters_methods_it_could_not_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from peftcheck.methods import adapterhub as adapters

    monkeypatch.setattr(adapters, "is_adapters_available", lambda: False)
    path = write(tmp_path, tiny_suite({"houlsby": {"backend": "adapters", "config": "double_seq_bn"}},
                                      expect={"trainable_ratio": {}}))
    assert main(["validate", str(path)]) == 0  # the suite is fine; its items skip where adapters is missing
    err = capsys.readouterr().err
    assert "methods.houlsby: not checked here: adapters is not installed" in err


@pytest.mark.parametrize(("expect", "method_expect", "why"), [
    ({}, {}, "no check is named, under `expect` or a method's `expect`"),
    ({"trainable_ratio": False}, {}, "every check it names is turned off (false) for every method"),
    ({"trainable_ratio": {}}, {"trainable_ratio": False}, "every check it names is turned off"),
])  # fmt: skip
def test_validate_refuses_a_suite_that_checks_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      expect: dict, method_expect: dict, why: str) -> None:
    suite = tiny_suite({"lora": {**LORA, "expect": method_expect}}, expect=expect)
    path = write(tmp_path, suite)
    assert main(["validate", str(path)]) == 1  # issue 26: it said "ok"
    err = capsys.readouterr().err
    line = yaml.safe_dump(suite, sort_keys=False).splitlines().index("expect: {}" if not expect else "expect:") + 1
    assert f"{path}:{line} expect: the suite yields no check item: {why}" in err and "Traceback" not in err


def test_missing_path_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_list_prints_item_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, tiny_suite({"lora": LORA}, expect={"trainable_ratio": {}, "base_frozen": {}}))
    assert main(["list", str(path)]) == 0
    assert capsys.readouterr().out.split() == [f"{path}::tiny::lora::trainable_ratio", f"{path}::tiny::lora::base_frozen"]


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "peftcheck suite"
    assert {"suite", "data", "methods"} <= set(schema["required"])
    assert "model" in schema["properties"]  # optional for a suite of saved adapters only (issue 15)
    assert schema["additionalProperties"] is False


def test_run_passes_results_and_pytest_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest as pytest_module

    path = write(tmp_path, tiny_suite({"lora": LORA}, expect={"trainable_ratio": {"max": 0.5}}))
    seen: list[list[str]] = []
    monkeypatch.setattr(pytest_module, "main", lambda args: seen.append(list(args)) or 0)
    out = str(tmp_path / "r.jsonl")
    # --results after the paths is peftcheck's own option; what follows -- is pytest's, verbatim
    assert main(["run", str(path), "--results", out, "--", "-k", "lora and not base", "-x"]) == 0
    assert seen[-1] == [str(path), "-p", "no:cacheprovider", "-k", "lora and not base", "-x",
                        "--peftcheck-results", out]  # fmt: skip
    assert main(["run", "--results", out, str(path)]) == 0
    assert seen[-1] == [str(path), "-p", "no:cacheprovider", "--peftcheck-results", out]


def test_arguments_after_double_dash_belong_to_run_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["schema", "--", "-x"])
    assert exit_info.value.code == 2 and "only `peftcheck run`" in capsys.readouterr().err


def test_run_end_to_end_writes_the_results_file(tmp_path: Path) -> None:
    # as a user runs it: a subprocess, a tiny suite, one selected item, the results file asked for
    import subprocess
    import sys

    path = write(tmp_path, tiny_suite({"lora": LORA}, expect={"trainable_ratio": {"max": 0.5}, "base_frozen": {}}))
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "peftcheck", "run", str(path), "--results", str(out), "--", "-k", "trainable_ratio"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    checks = [(r["method"], r["check"], r["outcome"]) for r in records if r.get("kind") == "check"]
    assert checks == [("lora", "trainable_ratio", "passed")]  # -k reached pytest: base_frozen deselected
    assert any(r.get("kind") == "method" and r["method"] == "lora" for r in records)
