"""The ``process`` executor driver: a task as a plain process, for hosts without Docker.

The task's argv (``entrypoint + command + args``; the image is not used — a note says
so in the agent's log) runs on the host's filesystem as a child of a per-task
supervisor shim (:mod:`shoal.agent.process.shim`), in its own network namespace with only
loopback up (the networking work plumbs veths into ``/proc/PID/ns/net``, the pid being
``Observed.pid``) and its own UTS namespace (so ``hostname`` is the task's).

Why a shim and files rather than the agent's own children: the workload must survive an
agent that is killed, and the next agent must adopt it. So everything about a task lives
in ``<state>/process/<node>/``, written atomically, keyed by the task uid:

- ``UID.spec.json``  what should run (argv, env, user, labels); written by ``start``
  before anything is spawned, so it is also the "label" :meth:`list_managed` finds.
- ``UID.json``       what runs: pid and its ``/proc`` start time (pid reuse cannot fool
  us), the supervisor's pid and start time; written by the shim once the child exists.
- ``UID.lock``       flock-ed by the shim for its whole life: "a supervisor owns this".
- ``UID.exit.json``  exit code (128+signal if killed) and error; written by the shim.
- ``UID.log``        stdout+stderr in CRI format, timestamped by the shim (``.log.1``
  after rotation).
- ``UID.health.json`` the health state, written by this driver, which runs the checks
  itself: the ``test`` argv executed with the task's env and user inside the task's
  network namespace (``nsenter --net=/proc/PID/ns/net``), with Docker's rules for
  interval, timeout, start period and retries. Persisting it means an adopted task
  stays ``healthy`` across an agent restart instead of dropping back to ``starting``.

Every call is idempotent: ``start`` returns the existing run if ``UID.json`` exists and
never spawns while a shim holds the lock; ``remove`` deletes files in an order that a
repeated ``remove`` completes. Exits reach :meth:`changes` at once through a datagram
the shim sends to an abstract unix socket named after the state directory, with a
once-a-second scan as the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal as signal_module
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from shoal.agent.exec import changefeed, workload
from shoal.agent.exec.executor import (
    LABEL_NAMESPACE,
    LABEL_TASK,
    MISSING,
    LogLine,
    Managed,
    Observed,
    TaskRejectedError,
    TaskSpec,
)
from shoal.agent.process.health import HealthChecks
from shoal.agent.process.logs import read_log
from shoal.agent.process.privileges import agent_capabilities, last_capability, privileges
from shoal.agent.process.shim import alive, read_json, resolve_user, write_json
from shoal.crds import template as tpl

log = structlog.get_logger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/shoal")
SHIM = Path(__file__).with_name("shim.py")
LOG_MAX_BYTES = 10 * 1024 * 1024
SPAWN_TIMEOUT = 15.0
SCAN_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True)
class _Paths:
    spec: Path
    state: Path
    exit: Path
    health: Path
    log: Path
    lock: Path
    shim_log: Path

    def all(self) -> list[Path]:
        # Deletion order: the spec goes last, so a half-done remove is still listed
        # by list_managed and gets finished by the next remove.
        return [self.health, self.exit, Path(f"{self.log}.1"), self.log, self.shim_log,
                self.state, self.lock, self.spec]


class ProcessExecutor:
    """Executor driver running tasks as supervised processes; one instance per node."""

    name = "process"

    def __init__(self, node: str, state_dir: Path | str = DEFAULT_STATE_DIR, *,
                 log_max_bytes: int = LOG_MAX_BYTES, python: str = sys.executable) -> None:
        self.node = node
        self.dir = Path(state_dir) / "process" / node
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log_max_bytes = log_max_bytes
        self._python = python
        # An abstract unix socket: no path length limit, no stale file after a crash. It
        # lives in the agent's network namespace, which its shims share.
        digest = hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:20]
        self._socket_name = f"\0shoal-process-{digest}"
        self._locks: dict[str, asyncio.Lock] = {}
        self._feed = changefeed.ChangeFeed()
        self._socket: socket.socket | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._closed = False
        self._log = log.bind(node=node, driver="process")
        self._checks = HealthChecks(self._publish, self._log)

    # -- files --------------------------------------------------------------------------

    def _paths(self, uid: str) -> _Paths:
        base = self.dir / uid
        return _Paths(Path(f"{base}.spec.json"), Path(f"{base}.json"),
                      Path(f"{base}.exit.json"), Path(f"{base}.health.json"),
                      Path(f"{base}.log"), Path(f"{base}.lock"), Path(f"{base}.shim.log"))

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def _supervisor_alive(self, uid: str) -> bool:
        """Does a shim hold the task's lock? (Only asked while UID.json does not exist.)"""
        try:
            fd = os.open(self._paths(uid).lock, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases our probe lock, if we got it
        return False

    # -- spec ---------------------------------------------------------------------------

    def _build_spec(self, task: TaskSpec) -> dict[str, Any]:
        """The shim's instructions; TaskRejectedError for anything that can never run."""
        with workload.rejecting():
            return self._read_spec(task)

    def _read_spec(self, task: TaskSpec) -> dict[str, Any]:
        template = task.template
        argv = tpl.command(template).argv()
        if not argv:
            raise TaskRejectedError("the process driver runs template.command (or "
                                    "entrypoint and args); this task has none")
        user = tpl.user(template)
        try:
            resolved = resolve_user(user)
        except ValueError as exc:
            raise TaskRejectedError(str(exc)) from exc
        home = "/root"
        if resolved is not None:
            with contextlib.suppress(KeyError):
                home = pwd.getpwuid(resolved[0]).pw_dir
        hostname = tpl.hostname(template) or workload.workload_name(task.name)[:63]
        env = {"PATH": workload.DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home}
        env.update(tpl.env(template))
        if "/" in argv[0]:
            if not os.access(argv[0], os.X_OK):
                raise TaskRejectedError(f'exec: "{argv[0]}": no such executable file')
        elif shutil.which(argv[0], path=env["PATH"]) is None:
            raise TaskRejectedError(f'exec: "{argv[0]}": executable file not found in $PATH')
        cwd = tpl.workdir(template) or "/"
        if not os.path.isdir(cwd):
            raise TaskRejectedError(f"workdir {cwd} does not exist on node {self.node}")
        stop_signal = tpl.stop_signal(template) or "SIGTERM"
        workload.signal_number(stop_signal)
        workload.health_spec(template)  # reject a malformed check now, not later
        granted = privileges(template, resolved[0] if resolved is not None else os.getuid(),
                             agent_capabilities(), last_capability())
        paths = self._paths(task.uid)
        return {
            "uid": task.uid, "name": task.name, "namespace": task.namespace,
            "service": task.service, "node": task.node,
            "labels": workload.task_labels(task), "image": template.get("image"),
            "argv": argv, "env": env, "cwd": cwd, "user": user, "hostname": hostname,
            "stop_signal": stop_signal, "healthcheck": template.get("healthcheck"),
            # Secrets and configs, bind-mounted read-only in the task's own mount namespace.
            "files": [{"source": f.source, "target": f.target} for f in task.files],
            "privileges": granted.as_spec(),
            "log": str(paths.log), "log_max_bytes": self._log_max_bytes,
            "events_socket": self._socket_name,
            "created_at": time.time(),
        }

    # -- lifecycle ----------------------------------------------------------------------

    async def prepare(self, task: TaskSpec) -> None:
        self._build_spec(task)
        if task.template.get("image"):
            self._log.info("process driver ignores the image", task=task.name,
                           task_uid=task.uid, image=task.template.get("image"))

    async def start(self, task: TaskSpec) -> Observed:
        logger = self._log.bind(task=task.name, task_uid=task.uid)
        paths = self._paths(task.uid)
        async with self._lock(task.uid):
            if not paths.state.exists():
                if not paths.spec.exists():
                    write_json(str(paths.spec), self._build_spec(task))
                if self._supervisor_alive(task.uid):
                    logger.info("a supervisor is already starting the task; waiting")
                    await self._wait_for_state(task.uid)
                else:
                    t0 = time.monotonic()
                    answer = await self._spawn(task.uid)
                    logger.info("process started", pid=answer.get("pid"),
                                status=answer.get("status"), error=answer.get("error"),
                                seconds=round(time.monotonic() - t0, 3))
                    if answer.get("status") == "busy":
                        await self._wait_for_state(task.uid)
            else:
                logger.info("adopting process")
            return await self.observe(task.uid)

    async def _spawn(self, uid: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            self._python, "-I", "-S", str(SHIM), str(self.dir), uid,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), SPAWN_TIMEOUT)
            stderr = await asyncio.wait_for(proc.stderr.read(), SPAWN_TIMEOUT)
        finally:
            await proc.wait()  # the launcher exits as soon as it forked
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            tail = self._paths(uid).shim_log
            shim = tail.read_text(errors="replace")[-2000:] if tail.exists() else ""
            raise RuntimeError(f"process supervisor for {uid} did not start: "
                               f"{stderr.decode(errors='replace')}{shim}") from None
        return answer

    async def _wait_for_state(self, uid: str, timeout: float = SPAWN_TIMEOUT) -> None:
        paths = self._paths(uid)
        deadline = time.monotonic() + timeout
        while not paths.state.exists() and time.monotonic() < deadline:
            if not self._supervisor_alive(uid):
                return  # it died before recording anything: observe() says missing
            await asyncio.sleep(0.02)

    async def observe(self, task_uid: str) -> Observed:
        paths = self._paths(task_uid)
        state = read_json(paths.state)
        if state is None:
            if paths.spec.exists() and self._supervisor_alive(task_uid):
                return Observed("created")
            return MISSING
        pid = state.get("pid")
        workload_id = str(pid) if pid else ""
        ended = read_json(paths.exit)
        if ended is not None:
            return Observed("exited", exit_code=ended.get("exit_code"),
                            error=ended.get("error") or "", workload_id=workload_id)
        if alive(pid, state.get("starttime")):
            self._checks.ensure(task_uid, paths.spec, paths.health, state)
            return Observed("running", health=self._checks.status(task_uid),
                            workload_id=workload_id, pid=pid)
        if alive(state.get("supervisor_pid"), state.get("supervisor_starttime")):
            # The workload just died; its supervisor is draining output and will write
            # the exit record within moments (and then poke changes()).
            for _ in range(50):
                await asyncio.sleep(0.02)
                ended = read_json(paths.exit)
                if ended is not None:
                    return Observed("exited", exit_code=ended.get("exit_code"),
                                    error=ended.get("error") or "", workload_id=workload_id)
            return Observed("running", health=self._checks.status(task_uid),
                            workload_id=workload_id, pid=None)
        return Observed("exited", error="the task's supervisor is gone and its exit status "
                        "with it (was the host rebooted or the shim killed?)",
                        workload_id=workload_id)

    async def stop(self, task_uid: str, grace: float, signal: str | None = None) -> None:
        paths = self._paths(task_uid)
        state = read_json(paths.state)
        if state is None and self._supervisor_alive(task_uid):
            await self._wait_for_state(task_uid)
            state = read_json(paths.state)
        if state is None or paths.exit.exists():
            return
        pid, starttime = state.get("pid"), state.get("starttime")
        if not alive(pid, starttime):
            return
        assert isinstance(pid, int)
        spec = read_json(paths.spec) or {}
        sig = workload.signal_number(signal or spec.get("stop_signal") or "SIGTERM")
        logger = self._log.bind(task=spec.get("name"), task_uid=task_uid, pid=pid)
        t0 = time.monotonic()
        self._signal_group(pid, sig)
        if not await self._wait_dead(pid, starttime, grace):
            logger.info("grace period over, killing", signal=sig, grace=grace)
            self._signal_group(pid, signal_module.SIGKILL)
            await self._wait_dead(pid, starttime, 30.0)
        # The supervisor records the exit right after; wait for it so that an observe()
        # straight after stop() reports the exit code.
        deadline = time.monotonic() + 5.0
        while not paths.exit.exists() and time.monotonic() < deadline:
            if not alive(state.get("supervisor_pid"), state.get("supervisor_starttime")):
                break
            await asyncio.sleep(0.02)
        logger.info("process stopped", signal=sig, seconds=round(time.monotonic() - t0, 3))

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        # The workload leads its own session and process group (pgid == pid).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    @staticmethod
    async def _wait_dead(pid: int, starttime: int | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while alive(pid, starttime):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
        return True

    async def remove(self, task_uid: str) -> None:
        paths = self._paths(task_uid)
        async with self._lock(task_uid):
            self._checks.cancel(task_uid)
            state = read_json(paths.state)
            if state is None and self._supervisor_alive(task_uid):
                await self._wait_for_state(task_uid)
                state = read_json(paths.state)
            if state is not None:
                pid, starttime = state.get("pid"), state.get("starttime")
                if isinstance(pid, int) and alive(pid, starttime):
                    self._signal_group(pid, signal_module.SIGKILL)
                    await self._wait_dead(pid, starttime, 10.0)
                sup, sup_start = state.get("supervisor_pid"), state.get("supervisor_starttime")
                if isinstance(sup, int) and not await self._wait_dead(sup, sup_start, 5.0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(sup, signal_module.SIGKILL)
                    await self._wait_dead(sup, sup_start, 5.0)
            existed = paths.spec.exists()
            for path in paths.all():
                path.unlink(missing_ok=True)
            self._checks.forget(task_uid)
        self._locks.pop(task_uid, None)
        if existed:
            self._log.info("process removed", task_uid=task_uid)

    async def list_managed(self) -> list[Managed]:
        managed: list[Managed] = []
        for spec_path in sorted(self.dir.glob("*.spec.json")):
            spec = read_json(spec_path)
            if spec is None or not spec.get("uid"):
                continue
            state = read_json(self._paths(spec["uid"]).state) or {}
            labels = spec.get("labels") or {}
            managed.append(Managed(spec["uid"], labels.get(LABEL_TASK, spec.get("name", "")),
                                   labels.get(LABEL_NAMESPACE, spec.get("namespace", "")),
                                   str(state.get("pid") or "")))
        return managed

    # -- changes ------------------------------------------------------------------------

    def _publish(self, uid: str) -> None:
        self._feed.publish(uid)

    async def changes(self) -> AsyncIterator[str]:
        async for uid in self._feed.follow(self._ensure_watch):
            yield uid

    def _ensure_watch(self) -> None:
        if self._scanner is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._socket_name)
        except OSError as exc:
            # Another live driver of this node has it (a second instance in one process,
            # in tests): the scan below still reports every change, just later.
            self._log.info("exit notifications unavailable", error=str(exc))
            sock.close()
        else:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_datagram)
            self._socket = sock
        self._scanner = asyncio.ensure_future(self._scan_loop())

    def _on_datagram(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = data.decode(errors="replace").strip()
            if uid:
                self._publish(uid)

    async def _scan_loop(self) -> None:
        """Safety net for lost datagrams: report any task whose liveness changed."""
        last: dict[str, tuple[bool, bool]] | None = None
        while True:
            seen: dict[str, tuple[bool, bool]] = {}
            for spec_path in self.dir.glob("*.spec.json"):
                uid = spec_path.name.removesuffix(".spec.json")
                paths = self._paths(uid)
                state = read_json(paths.state) or {}
                seen[uid] = (paths.exit.exists(), alive(state.get("pid"),
                                                        state.get("starttime")))
                if last is not None and last.get(uid) != seen[uid]:
                    self._publish(uid)  # changed, or appeared since the last scan
            last = seen
            await asyncio.sleep(SCAN_INTERVAL)

    # -- logs ---------------------------------------------------------------------------

    async def logs(self, task_uid: str, follow: bool = False, tail: int | None = None,
                   timestamps: bool = False) -> AsyncIterator[LogLine]:
        paths = self._paths(task_uid)
        if not paths.spec.exists():
            return
        async for line in read_log(paths.log, paths.exit, follow, tail, timestamps):
            yield line

    async def close(self) -> None:
        self._closed = True
        self._checks.close()
        if self._scanner is not None:
            self._scanner.cancel()
        if self._socket is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

