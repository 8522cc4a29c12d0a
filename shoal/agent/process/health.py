"""Health checks of process tasks, run by the agent with Docker's rules.

A container's health check is run by dockerd; a process task has no daemon, so the
driver runs the checks itself: the ``test`` argv executed with the task's environment and
user inside the task's network and UTS namespaces (``nsenter --net=/proc/PID/ns/net``),
every ``interval``, killed after ``timeout``; failures inside ``start_period`` do not
count, ``retries`` consecutive failures make the task ``unhealthy``, one success makes it
``healthy``. The state is written to ``UID.health.json`` after every probe, so an
adopted task stays ``healthy`` across an agent restart instead of dropping back to
``starting``.

Kept apart from the driver: the driver decides *when* a task is checked (while it runs),
this module *how*, and tells the driver through ``on_change`` when a task's health
changed so the driver can publish it on ``changes()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal as signal_module
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.agent.exec import workload
from shoal.agent.process.shim import alive, read_json, resolve_user, write_json
from shoal.crds import template as tpl

HEALTH_LOG_ENTRIES = 5  # like Docker's State.Health.Log
HEALTH_OUTPUT_MAX = 4096


@dataclasses.dataclass
class HealthState:
    """One task's health as Docker reports it (``State.Health``)."""

    status: str = "starting"
    failing_streak: int = 0
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class HealthChecks:
    """The running health checks of one node's process tasks, one asyncio task each."""

    def __init__(self, on_change: Callable[[str], None], logger: Any) -> None:
        self._on_change = on_change
        self._log = logger
        self._health: dict[str, HealthState] = {}
        self._checkers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def status(self, uid: str) -> str:
        """``none`` (no check running), ``starting``, ``healthy`` or ``unhealthy``."""
        health = self._health.get(uid)
        return health.status if health is not None else "none"

    def ensure(self, uid: str, spec_path: Path, record: Path, state: dict[str, Any]) -> None:
        """Start checking a running task, if its spec has a check and none runs yet;
        the state saved in ``record`` (a previous agent's) is where it resumes."""
        if uid in self._checkers or self._closed:
            return
        spec = read_json(spec_path) or {}
        try:
            check = workload.health_spec({"healthcheck": spec.get("healthcheck")})
        except tpl.TemplateError as exc:
            # start() refuses such a check; only a spec an older agent wrote can have
            # one. The task runs on unchecked rather than failing every observe (quietly:
            # observe asks again each time).
            self._log.debug("health check cannot be read, not checking", task_uid=uid,
                            error=str(exc))
            return
        if check is None:
            return
        saved = read_json(record) or {}
        self._health[uid] = HealthState(status=saved.get("status", "starting"),
                                        failing_streak=int(saved.get("failing_streak", 0)),
                                        log=list(saved.get("log") or []))
        self._checkers[uid] = asyncio.ensure_future(
            self._loop(uid, check, spec, state, record))

    def cancel(self, uid: str) -> None:
        """Stop checking a task (it is being removed); its state is kept until forget."""
        checker = self._checkers.pop(uid, None)
        if checker is not None:
            checker.cancel()

    def forget(self, uid: str) -> None:
        self._health.pop(uid, None)

    def close(self) -> None:
        self._closed = True
        for checker in self._checkers.values():
            checker.cancel()
        self._checkers.clear()

    async def _loop(self, uid: str, check: workload.HealthSpec, spec: dict[str, Any],
                    state: dict[str, Any], record: Path) -> None:
        pid, starttime = state["pid"], state.get("starttime")
        health = self._health[uid]
        logger = self._log.bind(task=spec.get("name"), task_uid=uid)
        try:
            while True:
                await asyncio.sleep(check.interval)
                if not alive(pid, starttime):
                    return
                started = time.time()
                exit_code, output = await probe(pid, check, spec)
                if not alive(pid, starttime):
                    return  # a probe failing because the task died says nothing
                in_start_period = started - float(state.get("started_at") or 0) \
                    < check.start_period
                before = health.status
                if exit_code == 0:
                    health.failing_streak = 0
                    health.status = "healthy"
                elif not in_start_period:
                    health.failing_streak += 1
                    if health.failing_streak >= check.retries:
                        health.status = "unhealthy"
                result = {"start": started, "end": time.time(), "exit_code": exit_code,
                          "output": output}
                health.log = [*health.log, result][-HEALTH_LOG_ENTRIES:]
                write_json(str(record), dataclasses.asdict(health))
                if health.status != before:
                    logger.info("health changed", health=health.status, was=before,
                                exit_code=exit_code, output=output[-200:])
                    self._on_change(uid)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("health checker failed")
        finally:
            if self._checkers.get(uid) is asyncio.current_task():
                self._checkers.pop(uid, None)


async def probe(pid: int, check: workload.HealthSpec, spec: dict[str, Any]) -> tuple[int, str]:
    """Run the test in the task's netns (and as its user); (exit code, output)."""
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", f"--uts=/proc/{pid}/ns/uts"]
    if spec.get("files"):
        # The task's own mounts (its secrets and configs); entering them resets the cwd.
        argv += [f"--mount=/proc/{pid}/ns/mnt", f"--wd={spec.get('cwd') or '/'}"]
    user = resolve_user(spec.get("user"))
    if user is not None:
        argv += [f"--setuid={user[0]}", f"--setgid={user[1]}"]
    argv += ["--", *check.argv()]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=spec.get("env"),
            cwd=spec.get("cwd") or "/", start_new_session=True)
    except OSError as exc:
        return -1, f"health check could not run: {exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), check.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal_module.SIGKILL)
        await proc.wait()
        return -1, f"Health check exceeded timeout ({check.timeout}s)"
    return proc.returncode or 0, out[-HEALTH_OUTPUT_MAX:].decode(errors="replace")
