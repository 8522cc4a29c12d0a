"""Where swctl writes and how: plain results on stdout, progress on stderr only for people.

Results (``service/web created``, tables, YAML) go to stdout unadorned, flushed line by
line so pipes and ``get -w`` readers see them at once. Progress (spinners, counters) is
drawn with rich on stderr, and only when both stdout and stderr are terminals: tests and
scripts capture output and must get exactly the results, nothing interleaved.

The one exception is the convergence report of ``apply`` and ``scale`` (``converge``):
waiting is what those verbs were asked to do, so their progress is a result and goes to
stdout — redrawn in place on a terminal, one line per change otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.status import Status

OK = "\u2714"  # ✔
FAIL = "\u2718"  # ✘


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def interactive() -> bool:
    """True when a person is watching: progress may be drawn."""
    return sys.stdout.isatty() and sys.stderr.isatty()


# Where out() writes inside captured(): the dashboard runs swctl's verbs in its own
# process, one asyncio task per action, and shows each action's result lines in the page.
# A context variable (not a swapped sys.stdout) keeps concurrent actions apart.
_CAPTURE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "swctl_capture", default=None)


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Collect the result lines :func:`out` writes in this context instead of printing."""
    lines: list[str] = []
    token = _CAPTURE.set(lines)
    try:
        yield lines
    finally:
        _CAPTURE.reset(token)


def out(text: str) -> None:
    """Write result lines to stdout and flush (a reader may be waiting for them)."""
    sink = _CAPTURE.get()
    if sink is not None:
        sink.extend(text.rstrip("\n").splitlines() if text else [])
        return
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


_STDOUT_CONSOLE: Console | None = None


def stdout_console() -> Console:
    """The console for styled results on a terminal (one per process: capture() nests)."""
    global _STDOUT_CONSOLE
    if _STDOUT_CONSOLE is None:
        _STDOUT_CONSOLE = Console(highlight=False, soft_wrap=True)
    return _STDOUT_CONSOLE


class Spinner:
    """A one-line "doing X..." status on stderr; a no-op when nobody is watching."""

    def __init__(self, message: str) -> None:
        self._status: Status | None = None
        if interactive():
            self._status = stderr_console().status(message)

    def update(self, message: str) -> None:
        if self._status is not None:
            self._status.update(message)

    def __enter__(self) -> Spinner:
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.stop()


class Counter:
    """A progress bar ``writing 1200/20000`` on stderr; a no-op when nobody is watching."""

    def __init__(self, progress: Progress | None, description: str, total: int) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=total) if progress else None

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def describe(self, description: str, total: int | None = None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description, total=total,
                                  completed=0)


@contextlib.contextmanager
def counter(description: str, total: int, threshold: int = 50) -> Iterator[Counter]:
    """A progress bar for ``total`` steps, drawn only for big jobs on a terminal."""
    if not interactive() or total < threshold:
        yield Counter(None, description, total)
        return
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), console=stderr_console(), transient=True)
    with progress:
        yield Counter(progress, description, total)
