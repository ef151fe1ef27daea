"""Step-by-step progress of a build: BuildKit's status stream turned into step events,
written to the build log (every step's output, a header per step with its timings)
and shown on the terminal (rich live display, or plain lines when not a terminal)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from rich.console import Console
from rich.live import Live
from rich.table import Table

from melange2.buildkit.client import Progress
from melange2.buildkit.errors import exit_code_of


def describe_error(error: str) -> str:
    """A step's error in a line: its exit code when BuildKit names one."""
    code = exit_code_of(error)
    return f"exit code {code}" if code is not None else error.splitlines()[0] if error else ""


class StepSink(Protocol):
    """Receives step events. Implementations: the log file, the terminal."""

    def started(self, step: str) -> None: ...
    def output(self, step: str, data: bytes) -> None: ...
    def finished(self, step: str, *, seconds: float, cached: bool, error: str) -> None: ...


@dataclass(kw_only=True)
class _StepState:
    name: str
    started: datetime | None = None
    done: bool = False


@dataclass(kw_only=True)
class ProgressTracker:
    """Feed it BuildKit progress; it calls each sink once per step start and end."""

    sinks: Sequence[StepSink]
    _steps: dict[str, _StepState] = field(default_factory=dict)

    def __call__(self, progress: Progress) -> None:
        for v in progress.vertexes:
            state = self._steps.setdefault(v.digest, _StepState(name=v.name))
            if v.started is not None and state.started is None:
                state.started = v.started
                for sink in self.sinks:
                    sink.started(state.name)
            if (v.completed is not None or v.error) and not state.done:
                state.done = True
                start = v.started or v.completed
                seconds = (v.completed - start).total_seconds() if v.completed and start else 0.0
                if state.started is None:  # cached vertices may complete without starting
                    state.started = start
                    for sink in self.sinks:
                        sink.started(state.name)
                for sink in self.sinks:
                    sink.finished(state.name, seconds=seconds, cached=v.cached, error=v.error)
        for chunk in progress.logs:
            name = self._steps[chunk.digest].name if chunk.digest in self._steps else chunk.digest
            for sink in self.sinks:
                sink.output(name, chunk.data)


class LogWriter(Protocol):
    """Where a log goes: a binary file, or anything that writes bytes like one."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class LogFileSink:
    """The full build log: a header when a step starts, its output, a footer with timing."""

    def __init__(self, out: LogWriter) -> None:
        self.out = out

    def started(self, step: str) -> None:
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        self.out.write(f"==> {step} (started {stamp})\n".encode())
        self.out.flush()

    def output(self, step: str, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def finished(self, step: str, *, seconds: float, cached: bool, error: str) -> None:
        how = "cached" if cached else f"{seconds:.2f}s"
        verdict = f"FAILED: {describe_error(error)}" if error else "done"
        self.out.write(f"<== {step}: {verdict} ({how})\n".encode())
        self.out.flush()


class PlainSink:
    """One line per step event, and the steps' output, for logs and pipes."""

    def __init__(self, console: Console, *, show_output: bool = True) -> None:
        self.console = console
        self.show_output = show_output

    def started(self, step: str) -> None:
        self.console.print(f"[step] {step}", highlight=False, markup=False, soft_wrap=True)

    def output(self, step: str, data: bytes) -> None:
        if self.show_output:
            for line in data.decode("utf-8", "replace").splitlines():
                self.console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)

    def finished(self, step: str, *, seconds: float, cached: bool, error: str) -> None:
        if error:
            self.console.print(
                f"[fail] {step}: {describe_error(error)}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        else:
            how = "cached" if cached else f"{seconds:.2f}s"
            self.console.print(
                f"[done] {step} ({how})", highlight=False, markup=False, soft_wrap=True
            )


class LiveSink:
    """A live table of steps with their state, and the last output line of the current one."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._rows: dict[str, tuple[str, str]] = {}
        self._last_line = ""
        self._began: dict[str, float] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveSink:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    def _render(self) -> Table:
        table = Table(show_header=True, header_style="bold", expand=False)
        table.add_column("step")
        table.add_column("state")
        for name, (state, detail) in self._rows.items():
            table.add_row(name, f"{state} {detail}".strip())
        if self._last_line:
            table.caption = self._last_line[-120:]
        return table

    def started(self, step: str) -> None:
        self._began[step] = time.monotonic()
        self._rows[step] = ("[yellow]running[/]", "")
        self.live.update(self._render())

    def output(self, step: str, data: bytes) -> None:
        lines = data.decode("utf-8", "replace").strip().splitlines()
        if lines:
            self._last_line = f"{step}: {lines[-1]}"
            self.live.update(self._render())

    def finished(self, step: str, *, seconds: float, cached: bool, error: str) -> None:
        if error:
            self._rows[step] = ("[red]failed[/]", "")
        else:
            self._rows[step] = ("[green]done[/]", "cached" if cached else f"{seconds:.2f}s")
        self.live.update(self._render())


def open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")
