"""The progress display of a run: rich on a terminal, plain lines anywhere else.

:func:`display` yields a :class:`Display` for the scenarios of one run. On a
terminal (stdout and stderr both, and rich installed) it is a live rich
progress bar: scenarios done out of all, the time, and the current scenario's
latest line; what the scenarios print (their per-pass lines on stderr, their
markdown on stdout) scrolls above it. Anywhere else, in CI, in the tests, in a
pipe, each scenario's start and end is one plain line on stderr and everything
else passes through untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TextIO

from .summary import Outcome


class Display(Protocol):
    """Told when each scenario of a run starts and how it ended."""

    def start(self, name: str) -> None: ...

    def finish(self, outcome: Outcome) -> None: ...


def interactive() -> bool:
    """A live display makes sense: both streams are a terminal, rich is installed."""
    if os.environ.get("TERM") == "dumb" or importlib.util.find_spec("rich") is None:
        return False
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def display(names: Sequence[str]) -> Iterator[Display]:
    """The display for a run of *names*, in order: rich if :func:`interactive`, else plain."""
    if interactive():
        with _rich_display(names) as shown:
            yield shown
    else:
        yield PlainDisplay(names)


def _ended(outcome: Outcome) -> str:
    if outcome.status == "ok":
        return f"ok in {outcome.seconds:,.1f} s"
    why = f": {outcome.error.splitlines()[0]}" if outcome.error else ""
    return f"{outcome.status.upper()} after {outcome.seconds:,.1f} s{why}"


class PlainDisplay:
    """One line on stderr as each scenario starts and ends."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def _position(self, name: str) -> str:
        return f"[{self.names.index(name) + 1}/{len(self.names)}]"

    def start(self, name: str) -> None:
        print(f"bench {self._position(name)} {name}: starting", file=sys.stderr, flush=True)

    def finish(self, outcome: Outcome) -> None:
        print(
            f"bench {self._position(outcome.scenario)} {outcome.scenario}: {_ended(outcome)}",
            file=sys.stderr,
            flush=True,
        )


class _Lines(io.TextIOBase):
    """A text stream that hands each complete line to *emit* (what a scenario prints)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        super().__init__()
        self.emit = emit
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.emit(line)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self.emit(line)


class _RichDisplay:
    """A rich progress bar; the scenario's latest stderr line as its description."""

    def __init__(self, progress: Any, names: Sequence[str]) -> None:
        self.progress = progress
        self.names = list(names)
        self.overall = progress.add_task("scenarios", total=len(names))
        self.current: Any = None
        self.name = ""

    def start(self, name: str) -> None:
        self.name = name
        self.current = self.progress.add_task(f"[bold]{name}[/bold]", total=None)

    def status(self, line: str) -> None:
        if self.current is not None and line.strip():
            text = line.strip().replace("[", "\\[")
            self.progress.update(self.current, description=f"[bold]{self.name}[/bold] {text[:60]}")

    def finish(self, outcome: Outcome) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        style = "green" if outcome.status == "ok" else "bold red"
        self.progress.console.print(
            f"[{style}]bench {outcome.scenario}: {_ended(outcome)}[/{style}]", highlight=False
        )
        self.progress.advance(self.overall)


@contextlib.contextmanager
def _rich_display(names: Sequence[str]) -> Iterator[Display]:
    from rich.console import Console  # noqa: PLC0415 - only on a terminal
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text  # noqa: PLC0415

    stdout: TextIO = sys.stdout
    stderr: TextIO = sys.stderr
    # The console writes to the real stderr: sys.stderr is about to be replaced.
    console = Console(file=stderr)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    shown = _RichDisplay(progress, names)

    def out(line: str) -> None:
        console.print(Text(line), highlight=False, soft_wrap=True)

    def err(line: str) -> None:
        console.print(Text(line, style="dim"), highlight=False, soft_wrap=True)
        shown.status(line)

    with progress:
        sys.stdout, sys.stderr = _Lines(out), _Lines(err)
        try:
            yield shown
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = stdout, stderr
