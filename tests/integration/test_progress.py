"""The live training line (issue 17): on the terminal past pytest's capture, quiet with -q."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import tiny_suite
from peftcheck.progress import MethodProgress, TerminalProgress

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}
STEPS = 6


def write_suite(pytester: pytest.Pytester) -> Path:
    suite = tiny_suite({"lora": LORA}, expect={"trainable_ratio": {"max": 0.5}}, model="tiny-llama")
    suite["train"]["max_steps"] = STEPS
    return pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))


PROGRESS_LINES = [
    f"peftcheck: training tiny/lora (LoraConfig, none, {STEPS} steps) ...",
    f"peftcheck: training tiny/lora step 1/{STEPS}, loss *, *s elapsed, ETA *s",
    "peftcheck: trained tiny/lora in *s (*s with setup and evaluation), loss * -> *",
]


@pytest.fixture
def written_through(monkeypatch: pytest.MonkeyPatch) -> None:
    # stdout written through as on a TTY: a line written under the item's capture is then
    # swallowed, not merely held in the buffer until the item ends
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


def step_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("peftcheck: training tiny/lora step")]


@pytest.mark.usefixtures("written_through")
def test_progress_reaches_the_terminal_past_capture(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    # a subprocess: in-process runs write the terminal into pytester's buffer, past any capture
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:peftcheck_report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(PROGRESS_LINES)
    assert 1 <= len(step_lines(result)) < STEPS  # not a TTY: a line per ~10 s, not one a step


@pytest.mark.usefixtures("written_through")
def test_peftcheck_run_shows_the_same(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.run(sys.executable, "-m", "peftcheck", "run", "tiny.yaml", "--", "-p", "no:peftcheck_report")
    assert result.ret == 0, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]
    result.stdout.fnmatch_lines(PROGRESS_LINES)


def test_quiet_with_q(pytester: pytest.Pytester) -> None:
    write_suite(pytester)
    result = pytester.runpytest("-q", "-p", "no:peftcheck_report")
    result.assert_outcomes(passed=1)
    assert "peftcheck: train" not in result.stdout.str()
    result.stdout.fnmatch_lines(["peftcheck: results written to */reports/results.jsonl"])  # kept: where to look


def test_xdist_workers_train_without_a_terminal(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    write_suite(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:peftcheck_report",
                                           "-p", "xdist", "-n", "1")
    result.assert_outcomes(passed=1)


class FakeReporter:
    """The parts of pytest's TerminalReporter that TerminalProgress uses, recording writes."""

    def __init__(self, *, tty: bool) -> None:
        self.isatty = tty
        self.out: list[str] = []

    def ensure_newline(self) -> None:
        pass

    def write(self, text: str, **markup: Any) -> None:
        self.out.append(text)

    def rewrite(self, line: str, **markup: Any) -> None:
        self.out.append("\r" + line + (" <erase>" if markup.get("erase") else ""))

    def flush(self) -> None:
        pass


class FakeConfig:
    def __init__(self, reporter: FakeReporter, *, verbose: int = 0) -> None:
        self.verbose = verbose
        self.reporter = reporter
        self.pluginmanager = self

    def getoption(self, name: str) -> int:
        assert name == "verbose"
        return self.verbose

    def get_plugin(self, name: str) -> Any:
        return self.reporter if name == "terminalreporter" else None  # no capture manager here


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a live line is cut to the terminal's width


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def train(progress: MethodProgress, clock: Clock, *, steps: int, step_s: float) -> None:
    progress.step(0, steps, None)
    for step in range(1, steps + 1):
        clock.now += step_s
        progress.step(step, steps, 3.0 - step / 10)
    progress.done(steps * step_s, [(1, 2.9), (steps, 3.0 - steps / 10)])


def test_a_tty_gets_one_line_rewritten_then_ended_by_the_final_line() -> None:
    reporter, clock = FakeReporter(tty=True), Clock()
    progress = MethodProgress.start(TerminalProgress(FakeConfig(reporter)), "s/lora", detail="LoraConfig", clock=clock)
    train(progress, clock, steps=4, step_s=0.5)
    assert reporter.out == [
        "\rpeftcheck: training s/lora (LoraConfig) ...",
        "\rpeftcheck: training s/lora step 1/4, loss 2.900, 0.5s elapsed, ETA 1.5s (LoraConfig) <erase>",
        "\rpeftcheck: training s/lora step 2/4, loss 2.800, 1.0s elapsed, ETA 1.0s (LoraConfig) <erase>",
        "\rpeftcheck: training s/lora step 3/4, loss 2.700, 1.5s elapsed, ETA 0.5s (LoraConfig) <erase>",
        "\rpeftcheck: training s/lora step 4/4, loss 2.600, 2.0s elapsed (LoraConfig) <erase>",
        "\rpeftcheck: trained s/lora in 2.0s (2.0s with setup and evaluation), loss 2.900 -> 2.600 <erase>",
        "\n",
    ]


def test_a_log_gets_a_step_line_at_most_every_ten_seconds() -> None:
    reporter, clock = FakeReporter(tty=False), Clock()
    progress = MethodProgress.start(TerminalProgress(FakeConfig(reporter)), "s/lora", clock=clock)
    train(progress, clock, steps=60, step_s=1.0)
    lines = "".join(reporter.out).splitlines()
    assert lines[0] == "peftcheck: training s/lora ..."
    assert [line.split(",")[0] for line in lines[1:-1]] == [
        f"peftcheck: training s/lora step {step}/60" for step in (1, 11, 21, 31, 41, 51)
    ]
    assert lines[-1] == "peftcheck: trained s/lora in 1m00s (1m00s with setup and evaluation), loss 2.900 -> -3.000"


def test_quiet_with_q_even_on_a_tty() -> None:
    reporter, clock = FakeReporter(tty=True), Clock()
    progress = MethodProgress.start(TerminalProgress(FakeConfig(reporter, verbose=-1)), "s/lora", clock=clock)
    train(progress, clock, steps=3, step_s=1.0)
    assert reporter.out == []


def test_a_plain_callable_gets_rate_limited_lines() -> None:
    lines: list[str] = []  # what Pipeline(progress=...) is given outside pytest
    clock = Clock()
    train(MethodProgress.start(lines.append, "s/lora", clock=clock), clock, steps=5, step_s=1.0)
    assert lines == [
        "peftcheck: training s/lora ...",
        "peftcheck: training s/lora step 1/5, loss 2.900, 1.0s elapsed, ETA 4.0s",
        "peftcheck: trained s/lora in 5.0s (5.0s with setup and evaluation), loss 2.900 -> 2.500",
    ]
