"""Live training progress: one line per method (step k of n, loss, elapsed, ETA), issue 17."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, final

__all__ = ["MethodProgress", "TerminalProgress", "format_seconds"]

TTY_INTERVAL_S = 0.2  # redrawing one line faster than this only costs time
LOG_INTERVAL_S = 10.0  # not a TTY (CI logs): a line per method per ~10 s is readable, not a flood


def format_seconds(seconds: float) -> str:
    """``4.2s``, ``3m07s``, ``1h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


@final
class TerminalProgress:
    """Progress lines on pytest's terminal, written past output capture.

    Training runs inside an item's call phase, whose output pytest holds back until the item
    ends: minutes of silence on a real model. Called with a line, it writes that line; ``live``
    rewrites one line in place, on a TTY only. Quiet with ``-q`` and without a terminal
    reporter (xdist workers, ``-p no:terminal``).
    """

    def __init__(self, config: Any) -> None:
        self._config = config
        self._live = False  # a rewritten line is on screen, not yet ended by a newline

    def _reporter(self) -> Any:
        if self._config.getoption("verbose") < 0:
            return None
        return self._config.pluginmanager.get_plugin("terminalreporter")

    @property
    def rewrites(self) -> bool:
        """Whether ``live`` can rewrite a line in place (a TTY), else lines must be rate-limited."""
        reporter = self._reporter()
        return reporter is not None and bool(reporter.isatty)  # a bool in pytest 8, bool-like in 9

    def __call__(self, line: str) -> None:
        self._write(line, live=False)

    def live(self, line: str) -> None:
        self._write(line, live=True)

    def _write(self, line: str, *, live: bool) -> None:
        reporter = self._reporter()
        if reporter is None:
            return
        capman = self._config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            if live:  # a wider line wraps, and "\r" goes back to its last row only; the size is
                # read here, where stdout is the terminal again and not the capture's file
                line = line[: shutil.get_terminal_size().columns - 1]
            if self._live:  # replace the live line rather than leave it half-updated above
                reporter.rewrite(line, erase=True)
            else:
                reporter.ensure_newline()  # after pytest's "file.yaml " prefix
                reporter.write("\r" + line if live else line)
            if not live:
                reporter.write("\n")
            reporter.flush()  # before capture resumes, or the buffered text lands in the capture
        self._live = live


@final
class MethodProgress:
    """The progress of one method: a start line, step lines, a final line with time and loss.

    ``sink`` takes whole lines; a ``TerminalProgress`` on a TTY gets one line rewritten as
    steps go by, any other sink (``Pipeline``'s default prints to stderr) a step line at most
    every ``LOG_INTERVAL_S``.
    """

    def __init__(
        self, sink: Callable[[str], Any], label: str, *, detail: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sink = sink
        self.label = label
        self.detail = detail
        self._clock = clock
        self._rewrite = isinstance(sink, TerminalProgress) and sink.rewrites
        self._interval = TTY_INTERVAL_S if self._rewrite else LOG_INTERVAL_S
        self._started = clock()  # the whole method: setup, training, evaluation
        self._train_started: float | None = None
        self._shown_at: float | None = None

    @classmethod
    def start(cls, sink: Callable[[str], Any], label: str, **kwargs: Any) -> "MethodProgress":
        """Show the start line and return the progress to pass to ``train_model``."""
        progress = cls(sink, label, **kwargs)
        progress._show(f"peftcheck: training {label}" + (f" ({progress.detail})" if progress.detail else "") + " ...")
        return progress

    def _show(self, line: str) -> None:
        if self._rewrite:
            self._sink.live(line)  # type: ignore[attr-defined]
        else:
            self._sink(line)

    def step(self, step: int, total: int, loss: float | None) -> None:
        """``train.StepProgress``: step 0 when training starts, then after each step."""
        now = self._clock()
        if step == 0 or self._train_started is None:
            self._train_started = now
        if step == 0:
            return
        last_redraw = self._rewrite and step >= total  # a TTY line shows the last step before "trained"
        if self._shown_at is not None and now - self._shown_at < self._interval and not last_redraw:
            return
        self._shown_at = now
        elapsed = now - self._train_started
        status = f"step {step}/{total}"
        if loss is not None:
            status += f", loss {loss:.3f}"
        status += f", {format_seconds(elapsed)} elapsed"
        if step < total:
            status += f", ETA {format_seconds(elapsed / step * (total - step))}"
        # on a TTY this line replaces the start line, so it keeps the detail, last: cut first if too wide
        detail = f" ({self.detail})" if self._rewrite and self.detail else ""
        self._show(f"peftcheck: training {self.label} {status}{detail}")

    def done(self, train_time_s: float, loss_curve: Sequence[tuple[int, float]]) -> None:
        """The final line: training time, the method's time in all, loss first -> last."""
        total = format_seconds(self._clock() - self._started)
        loss = f", loss {loss_curve[0][1]:.3f} -> {loss_curve[-1][1]:.3f}" if loss_curve else ""
        took = f"{format_seconds(train_time_s)} ({total} with setup and evaluation)"
        self._sink(f"peftcheck: trained {self.label} in {took}{loss}")
