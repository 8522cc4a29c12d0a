"""The hollow executor: fake workloads, so one process can stand in for hundreds of nodes.

It implements the :class:`~shoal.agent.exec.executor.Executor` contract exactly like the real
drivers do — idempotent calls keyed by task uid, adoption through ``start``, change
notifications through ``changes()`` — but a "workload" is a small record and a timer.
Scale work runs 1,000 nodes with 100 tasks each in one process, so nothing here costs an
asyncio task per workload: state transitions are ``loop.call_later`` timers (handles in
the event loop's heap) and a workload's state lives in a plain record.

Behaviour a test can ask for through the task template:

* image containing ``missing`` or ``invalid`` -> ``prepare`` raises TaskRejectedError;
* ``command: [exit, N]`` or env ``SHOAL_HOLLOW_EXIT=N`` -> runs, then exits with N;
  ``[true]``/``[false]`` exit 0/1, ``[sleep, S]`` runs S seconds and exits 0;
  env ``SHOAL_HOLLOW_EXIT_AFTER=S`` sets how long it runs before exiting (default: the
  start delay);
* env ``SHOAL_HOLLOW_HEALTH=unhealthy`` -> turns unhealthy once running (with a
  ``healthcheck`` in the template the health is faked as ``healthy`` otherwise);
* ``fail_rate`` makes that share of workloads exit 1 a short random while after running
  (seeded per node, so tests are repeatable).

With a state file (``--hollow-state``) the workloads outlive the agent process the way
containers outlive a killed docker-driver agent: every change is appended to a journal
with one ``write`` before the call returns, so a SIGKILL at any moment loses nothing the
task manager was told about. The journal is compacted when it is loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog

from shoal.agent.exec.executor import (
    LABEL_NAMESPACE,
    LABEL_NODE,
    LABEL_SERVICE,
    LABEL_TASK,
    LABEL_TASK_UID,
    MISSING,
    LogLine,
    Managed,
    Observed,
    TaskRejectedError,
    TaskSpec,
)
from shoal.crds import template as tpl

log = structlog.get_logger("shoal.agent.exec.hollow")

CREATED = "created"
RUNNING = "running"
EXITED = "exited"


@dataclasses.dataclass(slots=True)
class Workload:
    """One fake container. Times are wall-clock seconds so they survive a restart."""

    uid: str
    name: str
    namespace: str
    service: str
    node: str
    workload_id: str
    started_at: float
    running_at: float
    exit_at: float | None = None  # planned exit of its own (exit command, fail rate)
    exit_code: int | None = None
    state: str = CREATED
    health_check: bool = False
    unhealthy: bool = False
    stopped_code: int | None = None  # set when stopped by the agent

    def observed(self) -> Observed:
        health = "none"
        if self.health_check:
            if self.state == CREATED:
                health = "starting"
            elif self.state == RUNNING:
                health = "unhealthy" if self.unhealthy else "healthy"
        code = self.exit_code if self.state == EXITED else None
        return Observed(self.state, exit_code=code, health=health,
                        workload_id=self.workload_id)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies recursively and costs 10 us a call.
        return {name: getattr(self, name) for name in _WORKLOAD_FIELDS}


_WORKLOAD_FIELDS = tuple(f.name for f in dataclasses.fields(Workload))


class Journal:
    """The append-only state file shared by every hollow executor of one agent process.

    One line per change (``start`` with the whole workload, ``stop``, ``remove``). The
    line is written with a single ``os.write`` on an O_APPEND descriptor, which the
    kernel keeps whole even if the process is killed right after; a torn last line (a
    crash of the machine, not of the process) is skipped on load.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.workloads: dict[str, Workload] = {}
        lines = self._load()
        if lines > 2 * len(self.workloads):
            self._compact()  # only when mostly history: rewriting 100,000 lines takes seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    os.write(self._fd, b"\n")  # seal a torn last line: the next stays whole
        self.by_node: dict[str, list[Workload]] = {}
        for wl in self.workloads.values():
            self.by_node.setdefault(wl.node, []).append(wl)

    def _load(self) -> int:
        if not self.path.exists():
            return 0
        fields = set(_WORKLOAD_FIELDS)
        raws = self.path.read_bytes().splitlines()
        for raw in raws:
            try:
                entry = json.loads(raw)
                op = entry["op"]
                if op == "start":
                    wl = Workload(**{k: v for k, v in entry["w"].items() if k in fields})
                    self.workloads[wl.uid] = wl
                elif op == "stop" and entry["uid"] in self.workloads:
                    wl = self.workloads[entry["uid"]]
                    wl.state, wl.exit_code = EXITED, int(entry["code"])
                    wl.stopped_code = wl.exit_code
                elif op == "remove":
                    self.workloads.pop(entry["uid"], None)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable hollow state line", path=str(self.path),
                            error=str(exc))
        return len(raws)

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            for wl in self.workloads.values():
                fh.write(_line({"op": "start", "w": wl.to_json()}))
        os.replace(tmp, self.path)

    def append(self, entry: dict[str, Any]) -> None:
        os.write(self._fd, _line(entry))

    def close(self) -> None:
        os.close(self._fd)


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


T = TypeVar("T")


def _lenient(read: Callable[[Mapping[str, Any]], T], template: Mapping[str, Any],
             otherwise: T) -> T:
    """An accessor's reading, or ``otherwise`` where it refuses the field: a simulation
    runs whatever the task manager let through and rejects nothing on its own."""
    try:
        return read(template)
    except tpl.TemplateError:
        return otherwise


def _env(template: Mapping[str, Any]) -> dict[str, str]:
    none: dict[str, str] = {}
    return _lenient(tpl.env, template, none)


def _exit_plan(template: Mapping[str, Any], start_delay: float) -> tuple[int, float] | None:
    """(exit code, seconds running) the template asks for, or None to run until stopped."""
    env = _env(template)
    after_raw = env.get("SHOAL_HOLLOW_EXIT_AFTER")
    after = start_delay
    if after_raw is not None:
        try:
            after = max(0.0, float(after_raw))
        except ValueError:
            pass
    if "SHOAL_HOLLOW_EXIT" in env:
        try:
            return int(env["SHOAL_HOLLOW_EXIT"]), after
        except (TypeError, ValueError):
            return 1, after
    command = _lenient(tpl.command, template, tpl.Command()).command
    if command:
        verb = command[0]
        if verb == "exit":
            try:
                return int(command[1]) if len(command) > 1 else 0, after
            except (TypeError, ValueError):
                return 2, after  # what sh says about `exit garbage`
        if verb == "true":
            return 0, after
        if verb == "false":
            return 1, after
        if verb == "sleep" and len(command) > 1:
            try:
                return 0, max(0.0, float(command[1]))
            except (TypeError, ValueError):
                return 1, after
    return None


class TimerWheel:
    """Callbacks due at wall-clock times, batched into 10 ms slots: one event-loop timer
    per slot instead of one per workload, shared by every hollow node of the process.

    Callbacks are never cancelled; they check on firing whether they still apply (a
    stopped or removed workload ignores its old timers), which is cheaper than keeping
    handles for 100,000 workloads.
    """

    SLOT = 0.01

    def __init__(self) -> None:
        self._slots: dict[int, list[tuple[Callable[[Workload], None], Workload]]] = {}
        self.closed = False

    def at(self, when: float, callback: Callable[[Workload], None], wl: Workload) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, when - time.time())
        slot = math.ceil(due / self.SLOT)
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = []
            loop.call_at(slot * self.SLOT, self._fire, slot)
        entries.append((callback, wl))

    def _fire(self, slot: int) -> None:
        for callback, wl in self._slots.pop(slot, ()):
            if not self.closed:
                callback(wl)


class HollowExecutor:
    """Fake execution for one node; see the module docstring for what it can simulate."""

    name = "hollow"

    def __init__(self, node_name: str, start_delay: float = 0.1, fail_rate: float = 0.0,
                 seed: int | str | None = None, journal: Journal | None = None,
                 wheel: TimerWheel | None = None) -> None:
        self.node_name = node_name
        self.start_delay = max(0.0, start_delay)
        self.fail_rate = min(1.0, max(0.0, fail_rate))
        self._rng = random.Random(f"{seed}:{node_name}" if seed is not None else None)
        self._journal = journal
        self._workloads: dict[str, Workload] = {}
        self._changes: asyncio.Queue[str] = asyncio.Queue()
        self._wheel = wheel or TimerWheel()
        self._own_wheel = wheel is None
        self._followers: dict[str, asyncio.Event] = {}  # uid -> set when it exits
        self._closed = False
        self._resumed = False
        if journal is not None:
            for wl in journal.by_node.get(node_name, ()):
                self._workloads[wl.uid] = wl

    # --- internals ---

    def _resume(self) -> None:
        """Bring journalled workloads up to date with the clock and re-arm their timers.

        Done lazily on first use because timers need the running event loop.
        """
        if self._resumed:
            return
        self._resumed = True
        for wl in self._workloads.values():
            if wl.state != EXITED:
                self._arm(wl)

    def _arm(self, wl: Workload) -> None:
        now = time.time()
        if wl.state == CREATED:
            if wl.running_at <= now:
                wl.state = RUNNING
            else:
                self._wheel.at(wl.running_at, self._to_running, wl)
        if wl.exit_at is not None:
            if wl.exit_at <= now and wl.state == RUNNING:
                wl.state = EXITED
            else:
                self._wheel.at(wl.exit_at, self._to_exited, wl)

    def _to_running(self, wl: Workload) -> None:
        if wl.state == CREATED and self._workloads.get(wl.uid) is wl:
            wl.state = RUNNING
            self._notify(wl.uid)

    def _to_exited(self, wl: Workload) -> None:
        if wl.state != EXITED and self._workloads.get(wl.uid) is wl:
            wl.state = EXITED
            self._notify(wl.uid)

    # --- the Executor contract ---

    async def prepare(self, task: TaskSpec) -> None:
        image = _lenient(tpl.image, task.template, "")
        if "missing" in image or "invalid" in image:
            raise TaskRejectedError(f"image not found: {image}")

    async def start(self, task: TaskSpec) -> Observed:
        self._resume()
        existing = self._workloads.get(task.uid)
        if existing is not None:
            return existing.observed()  # adopt: never a second workload for one task
        now = time.time()
        running_at = now + self.start_delay
        wl = Workload(uid=task.uid, name=task.name, namespace=task.namespace,
                      service=task.service, node=self.node_name,
                      workload_id=os.urandom(32).hex(), started_at=now,
                      running_at=running_at)
        plan = _exit_plan(task.template, self.start_delay)
        if plan is not None:
            wl.exit_code, run_for = plan
            wl.exit_at = running_at + run_for
        elif self.fail_rate and self._rng.random() < self.fail_rate:
            wl.exit_code = 1
            wl.exit_at = running_at + self._rng.uniform(0.05, 1.0)
        check = _lenient(tpl.healthcheck, task.template, None)
        wl.health_check = check is not None and not check.disabled
        wl.unhealthy = _env(task.template).get("SHOAL_HOLLOW_HEALTH") == "unhealthy"
        if wl.unhealthy:
            wl.health_check = True
        if self.start_delay == 0:
            wl.state = RUNNING
        self._workloads[wl.uid] = wl
        if self._journal is not None:
            self._journal.append({"op": "start", "w": wl.to_json()})
        self._arm(wl)
        return wl.observed()

    async def observe(self, task_uid: str) -> Observed:
        self._resume()
        wl = self._workloads.get(task_uid)
        return wl.observed() if wl is not None else MISSING

    async def stop(self, task_uid: str, grace: float, signal: str | None = None) -> None:
        # A fake process honours SIGTERM at once, so the grace period is never used up.
        self._resume()
        wl = self._workloads.get(task_uid)
        if wl is None or wl.state == EXITED:
            return
        wl.state, wl.exit_code, wl.stopped_code = EXITED, 0, 0
        if self._journal is not None:
            self._journal.append({"op": "stop", "uid": task_uid, "code": 0})
        self._notify(task_uid)

    async def remove(self, task_uid: str) -> None:
        if self._workloads.pop(task_uid, None) is not None and self._journal is not None:
            self._journal.append({"op": "remove", "uid": task_uid})
        event = self._followers.pop(task_uid, None)
        if event is not None:
            event.set()

    async def list_managed(self) -> list[Managed]:
        self._resume()
        return [Managed(wl.uid, wl.name, wl.namespace, wl.workload_id)
                for wl in self._workloads.values()]

    async def changes(self) -> AsyncIterator[str]:
        while True:
            yield await self._changes.get()

    async def logs(self, task_uid: str, follow: bool = False, tail: int | None = None,
                   timestamps: bool = False) -> AsyncIterator[LogLine]:
        wl = self._workloads.get(task_uid)
        if wl is None:
            return

        def line(stream: str, text: str, at: float) -> LogLine:
            return LogLine(stream, text.encode(), at if timestamps else None)

        lines = [line("stdout", f"hollow task {wl.name} on node {wl.node}", wl.started_at),
                 line("stdout", f"workload {wl.workload_id[:12]} running", wl.running_at)]
        if wl.state == EXITED:
            lines.append(line("stderr", f"exited with code {wl.exit_code}", time.time()))
        for item in lines[-tail:] if tail is not None and tail > 0 else lines:
            yield item
        if follow and wl.state != EXITED:
            # Only log followers wait on an event; plain workloads never get one.
            await self._exit_event(task_uid).wait()
            if self._workloads.get(task_uid) is wl:
                yield line("stderr", f"exited with code {wl.exit_code}", time.time())

    def _exit_event(self, uid: str) -> asyncio.Event:
        event = self._followers.get(uid)
        if event is None:
            event = self._followers[uid] = asyncio.Event()
        return event

    def _notify(self, uid: str) -> None:
        self._changes.put_nowait(uid)
        wl = self._workloads.get(uid)
        event = self._followers.get(uid)
        if event is not None and (wl is None or wl.state == EXITED):
            event.set()
            del self._followers[uid]

    async def close(self) -> None:
        # Workloads are left as they are (adopted on restart); only timers go.
        if self._own_wheel:
            self._wheel.closed = True
        self._closed = True

    # --- for tests and benchmarks ---

    def labels_of(self, task_uid: str) -> dict[str, str]:
        """The labels a real driver would put on the workload (for parity in tests)."""
        wl = self._workloads.get(task_uid)
        if wl is None:
            return {}
        return {LABEL_TASK_UID: wl.uid, LABEL_TASK: wl.name, LABEL_NAMESPACE: wl.namespace,
                LABEL_SERVICE: wl.service, LABEL_NODE: wl.node}

    def __len__(self) -> int:
        return len(self._workloads)
