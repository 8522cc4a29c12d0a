"""Running the real ``swctl`` as a subprocess against the test etcd, for the CLI tests.

Every call gets the test's private key prefix through SHOAL_PREFIX, so CLI tests share
the session etcd without seeing each other's objects, and a keyring of its own through
SHOAL_KEYRING (made on first use), so any test may apply a Secret. Reading a long-running swctl
(``get -w``) goes through a reader thread with deadlines, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from shoal.crds import sealed

SWCTL = shutil.which("swctl")


def command(*args: str) -> list[str]:
    # The installed console script is what users run; fall back to the module when the
    # script is not on PATH (an unactivated virtualenv).
    return [SWCTL, *args] if SWCTL else [sys.executable, "-m", "shoal.cli", *args]


class Swctl:
    """``swctl`` bound to one etcd URL and key prefix."""

    def __init__(self, etcd_url: str, prefix: str, cwd: Path) -> None:
        self.etcd_url = etcd_url
        self.prefix = prefix
        self.cwd = cwd
        self.keyring = cwd / ".keyring.json"
        sealed.ensure(self.keyring)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, SHOAL_ETCD=self.etcd_url, SHOAL_PREFIX=self.prefix,
                   SHOAL_KEYRING=str(self.keyring))
        env.pop("SHOAL_DEBUG", None)
        return env

    def __call__(self, *args: str, input: str | None = None, expect: int | None = 0,
                 timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run swctl; check the exit code unless ``expect`` is None."""
        proc = subprocess.run(command(*args), input=input, capture_output=True, text=True,
                              env=self.env, cwd=self.cwd, timeout=timeout)
        if expect is not None:
            assert proc.returncode == expect, (
                f"swctl {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def write(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def start(self, *args: str) -> Streaming:
        proc = subprocess.Popen(command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env, cwd=self.cwd)
        return Streaming(proc)


class Streaming:
    """A running swctl whose stdout lines can be awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s; seen so far: "
                                 f"{self.seen}") from None
        if line is None:
            raise AssertionError(f"swctl exited ({self.proc.poll()}) after: {self.seen}")
        self.seen.append(line)
        return line

    def interrupt(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGINT, as Ctrl-C would; returns (exit code, stderr)."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SERVICE = """\
apiVersion: shoal.io/v1
kind: Service
metadata:
  name: {name}
  labels: {{app: {name}, tier: {tier}}}
spec:
  replicas: {replicas}
  template: {{image: shoal/busybox, command: [httpd, -f, -p, "8080"]}}
"""


def service(name: str, replicas: int = 1, tier: str = "front") -> str:
    return SERVICE.format(name=name, replicas=replicas, tier=tier)


class Cluster:
    """A test module's processes (controller-manager, agents): ``start`` one (again,
    after a kill) under a name, its output in ``<name>.log`` beside the test's files."""

    def __init__(self, swctl: Swctl) -> None:
        self.swctl = swctl
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[IO[bytes]] = []

    def start(self, name: str, *args: str) -> None:
        log = open(self.swctl.cwd / f"{name}.log", "ab")  # closed by hollow_cluster
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(command(*args), env=self.swctl.env,
                                            cwd=self.swctl.cwd, stdout=log,
                                            stderr=subprocess.STDOUT)


@contextlib.contextmanager
def hollow_cluster(swctl: Swctl, *agent_flags: str, nodes: int = 3) -> Iterator[Cluster]:
    """A controller-manager and one agent serving ``nodes`` hollow nodes (n-0, n-1, ...),
    ready when ``node ls`` says so; every process stopped on the way out."""
    from tests.helpers import eventually_sync, stop_processes

    c = Cluster(swctl)
    try:
        c.start("manager", "controller-manager")
        c.start("agent", "agent", "--runtime", "hollow", "--count", str(nodes), "--name",
                "n", *agent_flags)

        def ready() -> bool:
            rows = swctl("node", "ls").stdout.splitlines()[1:]
            return sum("ready" in row.split() for row in rows) >= nodes
        eventually_sync(ready, 20, f"{nodes} hollow nodes ready")
        yield c
    finally:
        stop_processes(list(c.procs.values()), timeout=10)
        for log in c.logs:
            log.close()
