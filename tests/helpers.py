"""Small test utilities: polling with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def eventually_sync(probe: Callable[[], T], timeout: float = 30.0, what: str = "condition",
                    interval: float = 0.05) -> T:
    """``eventually`` for a plain probe (a swctl run, a docker query) in a sync test."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 10.0,
                     interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM every process (last started first), wait for each, SIGKILL what outlives
    ``timeout``: a fixture's clean-up that never leaves an agent running."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoggedProcess:
    """A child process in its own session, its output in a log file the test can read.

    ``stop`` kills the whole session, so helpers a process started (an agent's heartbeat
    child) go with it; ``signal`` reaches the process alone, as a crash test wants.
    """

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._fh = log.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    async def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} (pid {self.pid}) did not exit within "
                                     f"{timeout}s")
            await asyncio.sleep(0.02)
        return self.popen.returncode

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            await self.wait(5.0)
        self._fh.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")
