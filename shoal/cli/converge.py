"""Waiting for services to converge, shown like ``docker service create`` shows it.

``apply`` and ``scale`` write a Service and return at once only with ``--detach``;
otherwise they call :func:`wait_for_services`, which watches the services' tasks and
prints, per service::

    overall progress: 2 out of 3 tasks
    1/3: running   [==================================================>]
    2/3: starting  [==========================================>        ]
    3/3: pending   [========>                                          ] no suitable node (...)
    verify: Waiting 2 seconds to verify that tasks are stable...
    verify: Service converged

On a terminal this is one block redrawn in place (rich Live); otherwise each line is
printed once each time its text changes, so scripts and tests can read the progress. It
goes to stdout: waiting is what the user asked the verb to do, so its report is the
verb's result, as with ``docker service create`` and ``kubectl rollout status``.

What "converged" means, level-triggered from the tasks alone (no controller cooperation):

* replicated: exactly ``spec.replicas`` slots hold a task wanted running, each slot one,
  and every one of them is observed running. Slot numbers are not renumbered after a
  scale-down (Swarm keeps them), so lines are numbered by position, not by slot.
* global: every node the orchestrator's own eligibility rule
  (``slots.global_node_status``) selects holds one running task, and no other node holds
  a task wanted running.

then the tasks must stay so for the verify window. While the updater reports on the
rollout (``status.update`` for the service's generation, see ``updatestatus``), its word
counts too: converged also needs ``completed`` (or an asked-for rollback completed), a
paused update or an automatic rollback ends the wait with the updater's message, and a
rollback's first line is Docker's (``rollback: manually requested rollback``). The
service itself is watched, so when the updater writes a rollback's spec the tasks are
judged against it. It gives up, with the reason, when a
task is rejected, a slot fails MAX_FAILURES times during the wait, the restart policy
gives up on a slot, the timeout passes (with each missing task's state and the
scheduler's explanation), or — quickly — when no task appears and no controller holds a
leader lease in the cluster (the controller-manager is not running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from rich.console import Group
from rich.live import Live
from rich.text import Text

from shoal.cli import console, errors, taskview, updatestatus
from shoal.crds import kinds
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import leader
from shoal.store import client, watch
from shoal.store import errors as store_errors

DEFAULT_TIMEOUT: Final = 120.0
# Swarm's monitor default is 5 s; swctl only needs to see the tasks hold still briefly.
DEFAULT_VERIFY_WINDOW: Final = 2.0
# Without a controller-manager nothing ever creates a task; say so after this long instead
# of after the whole timeout.
NO_CONTROLLER_GRACE: Final = 5.0
# A slot failing this often while we watch will not converge by itself (crash loop).
MAX_FAILURES: Final = 3
BAR_WIDTH: Final = 50
TICK: Final = 0.25

# The states a task passes on its way to running: the bar fills by position in this list.
PROGRESS_STATES: Final = (ts.NEW, ts.PENDING, ts.ASSIGNED, ts.ACCEPTED, ts.PREPARING,
                          ts.STARTING, ts.RUNNING)
_PROGRESS_RANK: Final = {state: i for i, state in enumerate(PROGRESS_STATES)}
CONTROLLER_HINT: Final = "is the controller-manager running? (swctl up)"


@dataclasses.dataclass(frozen=True)
class WaitOptions:
    timeout: float = DEFAULT_TIMEOUT
    verify_window: float = DEFAULT_VERIFY_WINDOW


def add_wait_flags(p: argparse.ArgumentParser) -> None:
    """``-d/--detach``, ``--timeout`` and ``--verify-window`` for verbs that wait."""
    p.add_argument("-d", "--detach", action="store_true",
                   help="return once written, without waiting for the services to converge")
    p.add_argument("--timeout", type=seconds_arg, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="give up waiting after this long, exit 1 (default "
                        f"{DEFAULT_TIMEOUT:g})")
    p.add_argument("--verify-window", type=seconds_arg, default=DEFAULT_VERIFY_WINDOW,
                   metavar="SECONDS", help="how long the tasks must stay running to count as "
                   f"converged (default {DEFAULT_VERIFY_WINDOW:g})")


MAX_SECONDS = 7 * 86_400.0
"""The longest wait a flag takes (a week): past it a number is a typo, and far past it
(1e20) grpc's deadlines overflow and a request waits for ever instead of timing out."""


def seconds_arg(text: str, minimum_exclusive: bool = False) -> float:
    """An argparse type: seconds, as 30, 1.5 or 30s (>= 0, at most a week)."""
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid duration "{text}": expected seconds, '
                                         "e.g. 30 or 1.5") from None
    if not math.isfinite(value):  # nan passes every comparison below
        raise argparse.ArgumentTypeError(f'invalid duration "{text}": expected a number of '
                                         "seconds, e.g. 30 or 1.5")
    if value < 0 or (minimum_exclusive and value == 0):
        bound = "> 0" if minimum_exclusive else ">= 0"
        raise argparse.ArgumentTypeError(f'invalid duration "{text}": must be {bound}')
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f'invalid duration "{text}": at most '
                                         f"{MAX_SECONDS:.0f} (a week)")
    return value


def positive_seconds_arg(text: str) -> float:
    """An argparse type: seconds > 0 (a request timeout of 0 could never succeed)."""
    return seconds_arg(text, minimum_exclusive=True)


def options_from(args: argparse.Namespace) -> WaitOptions | None:
    """The wait the user asked for, or None with ``--detach``."""
    if args.detach:
        return None
    return WaitOptions(timeout=args.timeout, verify_window=args.verify_window)


# --- one service's state ---

def bar(state: str) -> str:
    """``[=====>     ]``: full at running, empty for a task not started or ended."""
    rank = _PROGRESS_RANK.get(state, 0)
    filled = BAR_WIDTH * rank // (len(PROGRESS_STATES) - 1)
    return "[" + "=" * filled + ">" + " " * (BAR_WIDTH - filled) + "]"


@dataclasses.dataclass(frozen=True)
class Line:
    """One task of the progress: ``key`` is ``1/3`` (replicated) or a node name (global);
    ``label`` names it in error messages (``web.3``)."""

    key: str
    label: str
    state: str
    message: str = ""
    #: The task runs the service's current spec. One that does not (an update has not
    #: reached its slot yet) is shown with an empty bar and counts for nothing.
    current: bool = True

    @property
    def done(self) -> bool:
        return self.current and self.state == ts.RUNNING

    def text(self, key_width: int = 0) -> str:
        tail = f" {self.message}" if self.message else ""
        if not self.current:
            return f"{self.key + ':':<{key_width + 1}} {'':<9} {bar(ts.NEW)}{tail}"
        return f"{self.key + ':':<{key_width + 1}} {self.state:<9} {bar(self.state)}{tail}"


@dataclasses.dataclass
class Snapshot:
    lines: list[Line]
    converged: bool
    has_tasks: bool
    scheduled: bool  # some task wanted running has a node or a scheduler message
    failure: str | None = None

    @property
    def running(self) -> int:
        return sum(line.done for line in self.lines)


def _old_line(key: str, label: str, task: Resource) -> Line:
    """A slot whose task still runs an earlier spec: the update has not got there yet."""
    state = ts.observed_state(task)
    return Line(key, label, state, f"{task.metadata.name} ({state}) runs the previous spec; "
                "waiting to be updated", current=False)


def _line_message(task: Resource) -> str:
    state = ts.observed_state(task)
    if state in (ts.NEW, ts.PENDING) or ts.is_terminal(state):
        return taskview.error_cell(task)
    return ""


class ServiceWatch:
    """Progress of one service across successive views of its tasks.

    Remembers what it has seen so a failure is counted once, and tasks that had already
    ended before the wait began (history) never count as failures of this change.
    """

    def __init__(self, service: Resource, title: str | None) -> None:
        self.service = service
        self.name = service.metadata.name
        self.namespace = service.metadata.namespace or "default"
        self.mode = taskview.mode_of(service)
        self.title = title
        self._ended_before: set[str] | None = None
        self._counted: set[str] = set()
        self._failures: dict[int | str, int] = {}
        self._update_failures = 0  # failed new tasks seen while an update rolls out
        self.verify_since: float | None = None
        #: Docker's first line of a rollback, kept once seen (``updatestatus``).
        self.header: str | None = None
        #: The updater reports on this rollout: failures of its new tasks are left to
        #: its status (see ``_failure``).
        self.trust_status = False
        #: This wait follows a rollback it asked for (a refusal then fails it).
        self.asked_rollback = False
        self.verify_text: str | None = None
        self.done = False
        self.last: Snapshot | None = None
        # Imported here: the orchestrator's modules pull in the controllers' shared
        # ones, which the start-up of every swctl verb would otherwise pay for.
        from shoal.controllers import taskspec

        # What "current spec" means: the controllers' own rule for a dirty task, so a
        # replicas-only change counts the running tasks and an image change does not.
        self._wanted = taskspec.Wanted(service)

    def refresh(self, service: Resource) -> None:
        """Follow a newer version of the service: a spec written meanwhile (by the
        updater's rollback, or another writer) is what the tasks are judged against."""
        if service.metadata.generation != self.service.metadata.generation:
            self._wanted = ServiceWatch(service, self.title)._wanted
        self.service = service

    def stale(self, task: Resource) -> bool:
        """The task runs something other than the service's current spec."""
        return self._wanted.dirty(task)

    @property
    def ref(self) -> str:
        return f"service/{self.name}" + (f" in namespace {self.namespace}"
                                         if self.namespace != "default" else "")

    def evaluate(self, tasks: Sequence[Resource], nodes: Sequence[Resource]) -> Snapshot:
        if self._ended_before is None:
            self._ended_before = {t.metadata.name for t in tasks if ts.has_ended(t)}
        if self.mode == taskview.GLOBAL:
            snap = self._global(tasks, nodes)
        else:
            snap = self._replicated(tasks)
        snap.failure = snap.failure or self._failure(tasks)
        self.last = snap
        return snap

    def _replicated(self, tasks: Sequence[Resource]) -> Snapshot:
        want = taskview.replicas_of(self.service)
        slots = [s for s in taskview.group_slots(tasks, taskview.REPLICATED)
                 if isinstance(s.key, int) and s.key > 0]
        live = [s for s in slots if s.active]
        lines = []
        for i, slot in enumerate(live[:want]):
            task = slot.active[0]
            key, label = f"{i + 1}/{want}", taskview.slot_label(self.name, slot)
            if self.stale(task):
                lines.append(_old_line(key, label, task))
                continue
            lines.append(Line(key, label, ts.observed_state(task), _line_message(task)))
        for i in range(len(lines), want):
            lines.append(Line(f"{i + 1}/{want}", f"{self.name} (task {i + 1} of {want})",
                              ts.NEW, "no task yet"))
        converged = (len(live) == want and all(len(s.active) == 1 for s in live)
                     and all(line.done for line in lines))
        finished = self._given_up(slots) if len(live) < want else None
        return Snapshot(lines, converged, bool(tasks), _scheduled(tasks), finished)

    def _global(self, tasks: Sequence[Resource], nodes: Sequence[Resource]) -> Snapshot:
        # Imported here: the orchestrator's planning module pulls in the controllers'
        # shared modules, which the start-up of every swctl verb would otherwise pay for.
        from shoal.controllers.orchestrator import slots as orch_slots
        from shoal.crds import constraints as cons

        try:
            placement = self.service.spec.get("placement") or {}
            constraints = cons.parse_constraints(placement.get("constraints"))
        except cons.ConstraintError as exc:
            return Snapshot([], False, bool(tasks), False, f"invalid constraint: {exc}")
        by_node = {s.key: s for s in taskview.group_slots(tasks, taskview.GLOBAL)}
        lines = []
        wanted: set[str] = set()
        for node in sorted(nodes, key=lambda n: n.metadata.name):
            name = node.metadata.name
            keep, grow, _ = orch_slots.global_node_status(node, constraints)
            slot = by_node.get(name)
            if not (grow or (keep and slot is not None and slot.active)):
                continue
            wanted.add(name)
            label = taskview.slot_label(self.name, name)
            if slot is not None and slot.active:
                task = slot.active[0]
                if self.stale(task):
                    lines.append(_old_line(name, label, task))
                    continue
                lines.append(Line(name, label, ts.observed_state(task), _line_message(task)))
            else:
                lines.append(Line(name, label, ts.NEW, "no task yet"))
        extra = [s for s in by_node.values() if s.active and s.key not in wanted]
        converged = (not extra and all(k in by_node and len(by_node[k].active) == 1
                                         for k in wanted)
                     and all(line.done for line in lines))
        return Snapshot(lines, converged, bool(tasks), _scheduled(tasks))

    def _given_up(self, slots: Sequence[taskview.Slot]) -> str | None:
        """A slot the restart policy stopped refilling (for this spec) never converges."""
        from shoal.controllers.orchestrator import restart as rs

        generation = self.service.metadata.generation
        for slot in slots:
            newest = slot.tasks[0]
            reason = newest.metadata.annotations.get(rs.NO_RESTART)
            if (not slot.active and reason and ts.generation_of(newest) == generation):
                err = taskview.error_cell(newest)
                return (f"{taskview.slot_label(self.name, slot)}: the restart policy gave up "
                        f"({reason})" + (f"; last error: {err}" if err else ""))
        return None

    def _failure(self, tasks: Sequence[Resource]) -> str | None:
        """A rejected task, or a slot that keeps failing, since the wait began. Only
        tasks of the current spec count: an older spec's task failing (the one a revert
        is replacing) says nothing about this change."""
        from shoal.controllers import taskspec
        from shoal.controllers.updater import config as update_config

        assert self._ended_before is not None
        # While tasks of an earlier spec are still wanted, the updater is rolling the
        # change out; failures of new tasks pause it by the service's updateConfig
        # (config.UpdateConfig.pauses_after), the rule this wait applies too.
        updating = any(ts.is_active_desired(t) and self.stale(t) for t in tasks)
        config = update_config.for_service(self.service)
        total = len({taskview.slot_key(t, self.mode) for t in tasks
                     if ts.is_active_desired(t)})
        for task in sorted(tasks, key=taskspec.age_key):  # oldest first: count in order
            name = task.metadata.name
            state = ts.observed_state(task)
            if name in self._ended_before or name in self._counted or state not in (
                    ts.REJECTED, ts.FAILED) or self.stale(task):
                continue
            self._counted.add(name)
            where = f" on node {ts.node_name_of(task)}" if ts.node_name_of(task) else ""
            err = taskview.error_cell(task) or "no error reported"
            what = "was rejected" if state == ts.REJECTED else "failed"
            if updating:
                if self.trust_status:
                    # The updater reports on this rollout: its status says whether the
                    # failures pause it or roll it back, in its own words (updatestatus).
                    continue
                self._update_failures += 1
                if config.pauses_after(self._update_failures, total):
                    return f"update paused: task {name} {what}{where}: {err}"
            elif state == ts.REJECTED:
                return f"task {name} {what}{where}: {err}"
            key = taskview.slot_key(task, self.mode)
            self._failures[key] = self._failures.get(key, 0) + 1
            if self._failures[key] >= MAX_FAILURES:
                return (f"{taskview.slot_label(self.name, key)} failed "
                        f"{self._failures[key]} times while waiting; last: task {name}"
                        f"{where}: {err}")
        return None

    def stall_reasons(self) -> list[str]:
        """Why the service is not converged yet, for the timeout message."""
        snap = self.last
        if snap is None:
            return []
        if not snap.has_tasks and snap.lines:
            return [f"no task was created for {self.name}; {CONTROLLER_HINT}"]
        if snap.lines and not snap.scheduled:
            return [f"no task of {self.name} was scheduled; {CONTROLLER_HINT}"]
        out = [f"{line.label}: " + (line.message if not line.current else line.state + (
               f": {line.message}" if line.message else ""))
               for line in snap.lines if not line.done]
        if not out:
            out = ["tasks are running but not yet as the spec says (an old task is still "
                   "wanted running, or a scale-down is in progress)"]
        return out

    def block(self) -> Block:
        snap = self.last
        lines = snap.lines if snap else []
        width = max((len(line.key) for line in lines), default=0)
        overall = f"overall progress: {snap.running if snap else 0} out of {len(lines)} tasks"
        return Block(self.title, overall, [(line.key, line.text(width)) for line in lines],
                     self.verify_text, self.header)


def _scheduled(tasks: Sequence[Resource]) -> bool:
    """Has a scheduler looked at the tasks: one is placed, or explained as unplaceable."""
    return any(ts.is_active_desired(t) and (
        ts.node_name_of(t) or str(t.status.get("message") or "").startswith(
            taskview.UNPLACEABLE_PREFIX)) for t in tasks)


# --- output ---

@dataclasses.dataclass(frozen=True)
class Block:
    title: str | None
    overall: str
    lines: list[tuple[str, str]]  # (key, text)
    verify: str | None
    header: str | None = None


class View(Protocol):
    def show(self, blocks: Sequence[Block]) -> None: ...
    def close(self) -> None: ...


class PlainView:
    """Line-per-change text for pipes: every line printed again only when it changes."""

    def __init__(self, write: Callable[[str], None] = console.out) -> None:
        self._write = write
        self._printed: dict[tuple[str | None, str], str] = {}

    def _emit(self, title: str | None, key: str, text: str | None) -> None:
        if text is None or self._printed.get((title, key)) == text:
            return
        self._printed[(title, key)] = text
        self._write(f"{title}: {text}" if title else text)

    def show(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            self._emit(block.title, "\0header", block.header)
            self._emit(block.title, "\0overall", block.overall)
            for key, text in block.lines:
                self._emit(block.title, key, text)
            self._emit(block.title, "\0verify", block.verify)

    def close(self) -> None:
        pass


class LiveView:
    """The same blocks redrawn in place on a terminal; the last frame stays on screen."""

    def __init__(self) -> None:
        self._live = Live(console=console.stdout_console(), auto_refresh=False,
                          transient=False)
        self._live.start()

    def show(self, blocks: Sequence[Block]) -> None:
        texts: list[tuple[str, str]] = []
        for block in blocks:
            if block.title:
                texts.append((block.title, "bold"))
            if block.header:
                texts.append((block.header, ""))
            texts.append((block.overall, ""))
            texts.extend((text, "") for _, text in block.lines)
            if block.verify:
                texts.append((block.verify, ""))
        # One screen line per text, cut rather than wrapped: wrapped lines would make the
        # in-place redraw of a narrow terminal jump.
        parts = [Text(text, style=style, no_wrap=True, overflow="ellipsis")
                 for text, style in texts]
        self._live.update(Group(*parts), refresh=True)

    def close(self) -> None:
        self._live.stop()


def make_view() -> View:
    return LiveView() if console.stdout_is_tty() else PlainView()


# --- the wait ---

class _Feed:
    """Tasks (and, for global services, nodes) kept current from etcd watches."""

    def __init__(self, store: client.Store, task_info: kinds.KindInfo,
                 node_info: kinds.KindInfo | None, namespace: str | None,
                 wanted: set[tuple[str, str]],
                 service_info: kinds.KindInfo | None = None) -> None:
        self.tasks: dict[tuple[str, str], dict[str, Resource]] = {k: {} for k in wanted}
        self.nodes: dict[str, Resource] = {}
        #: The services themselves, newest version seen (when followed).
        self.services: dict[tuple[str, str], Resource] = {}
        self.changed = asyncio.Event()
        self._ready = {"tasks": asyncio.Event(), "nodes": asyncio.Event(),
                       "services": asyncio.Event()}
        self._store = store
        self._jobs = [asyncio.ensure_future(self._follow_tasks(task_info, namespace))]
        if service_info is not None:
            self._jobs.append(asyncio.ensure_future(
                self._follow_services(service_info, namespace, wanted)))
        else:
            self._ready["services"].set()
        if node_info is not None:
            self._jobs.append(asyncio.ensure_future(self._follow_nodes(node_info)))
        else:
            self._ready["nodes"].set()

    async def ready(self) -> None:
        await asyncio.gather(*(e.wait() for e in self._ready.values()))

    def failed(self) -> BaseException | None:
        for job in self._jobs:
            if job.done() and not job.cancelled() and job.exception() is not None:
                return job.exception()
        return None

    async def _follow_tasks(self, info: kinds.KindInfo, namespace: str | None) -> None:
        async for event in watch.watch_kind(self._store, info, namespace):
            if event.type == watch.RESET:
                for held in self.tasks.values():
                    held.clear()
                for obj in event.objects:
                    self._put(obj)
                self._ready["tasks"].set()
            elif event.obj is not None:
                if event.type == watch.DELETED:
                    for held in self.tasks.values():
                        held.pop(f"{event.obj.namespace}/{event.obj.name}", None)
                else:
                    self._put(event.obj)
            self.changed.set()

    def _put(self, task: Resource) -> None:
        key = taskview.service_key_of(task)
        if key in self.tasks:
            self.tasks[key][f"{task.namespace}/{task.name}"] = task

    async def _follow_services(self, info: kinds.KindInfo, namespace: str | None,
                               wanted: set[tuple[str, str]]) -> None:
        def key(obj: Resource) -> tuple[str, str]:
            return (obj.namespace or "default", obj.name)

        async for event in watch.watch_kind(self._store, info, namespace):
            if event.type == watch.RESET:
                self.services = {key(o): o for o in event.objects if key(o) in wanted}
                self._ready["services"].set()
            elif event.obj is not None and key(event.obj) in wanted:
                if event.type == watch.DELETED:
                    self.services.pop(key(event.obj), None)
                else:
                    self.services[key(event.obj)] = event.obj
            self.changed.set()

    async def _follow_nodes(self, info: kinds.KindInfo) -> None:
        async for event in watch.watch_kind(self._store, info):
            if event.type == watch.RESET:
                self.nodes = {o.name: o for o in event.objects}
                self._ready["nodes"].set()
            elif event.obj is not None:
                if event.type == watch.DELETED:
                    self.nodes.pop(event.obj.name, None)
                else:
                    self.nodes[event.obj.name] = event.obj
            self.changed.set()

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        for job in self._jobs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job


async def controllers_running(store: client.Store) -> bool:
    """Does any controller hold a leader lease in this cluster? (The runtime's leader
    keys live under ``<prefix>/leases/controllers/``.)"""
    held, _ = await store.raw_list(store.raw_key(*leader.LEASES) + b"/")
    return bool(held)


async def wait_for_services(store: client.Store, refs: Sequence[tuple[str, str]],
                            opts: WaitOptions, view: View | None = None, *,
                            asked_rollback: bool = False) -> None:
    """Wait until every service in ``refs`` ((namespace, name)) has converged;
    ``asked_rollback``: the caller wrote a rollback request for them.

    Raises CliError (exit 1) with the reason when one cannot converge or time runs out.
    """
    if not refs:
        return
    registry = kinds.Registry.builtin()
    service_info = registry.lookup("services")
    services: list[Resource] = []
    for namespace, name in refs:
        try:
            services.append(await store.get(service_info, name, namespace))
        except store_errors.NotFoundError:
            raise errors.CliError(f'service "{name}" in namespace "{namespace}" was deleted '
                                  "before it converged") from None
    namespaces = {s.metadata.namespace or "default" for s in services}
    several = len(services) > 1

    def title(s: Resource) -> str | None:
        if not several:
            return None
        return s.metadata.name if len(namespaces) == 1 else (
            f"{s.metadata.namespace}/{s.metadata.name}")

    watches = [ServiceWatch(s, title(s)) for s in services]
    for w in watches:
        w.asked_rollback = asked_rollback
        if asked_rollback:
            # Docker prints its first line at once; the updater's status says the same
            # only once it takes the request up, which can be after the first progress.
            w.header = updatestatus.MANUAL_ROLLBACK_HEADER
    needs_nodes = any(w.mode == taskview.GLOBAL for w in watches)
    feed = _Feed(store, registry.lookup("tasks"),
                 registry.lookup("nodes") if needs_nodes else None,
                 next(iter(namespaces)) if len(namespaces) == 1 else None,
                 {(w.namespace, w.name) for w in watches}, service_info)
    view = view or make_view()
    start = time.monotonic()
    deadline = start + opts.timeout
    try:
        try:
            await asyncio.wait_for(feed.ready(), max(0.1, opts.timeout))
        except TimeoutError:
            raise errors.CliError(f"could not read the tasks from etcd at {store.url} "
                                  f"within {opts.timeout:g}s; the services were written, "
                                  "check them with `swctl service ps NAME`") from None
        controllers_checked = False
        while True:
            feed.changed.clear()
            now = time.monotonic()
            failures = _step(watches, feed, opts, now)
            view.show([w.block() for w in watches])
            if failures:
                raise errors.CliError(failures)
            if all(w.done for w in watches):
                return
            if now >= deadline:
                raise errors.CliError(_timeout_lines(watches, opts.timeout))
            if not controllers_checked and now - start >= min(NO_CONTROLLER_GRACE,
                                                              opts.timeout):
                controllers_checked = True
                idle = [w for w in watches
                        if not w.done and w.last and w.last.lines and not w.last.has_tasks]
                if idle and not await controllers_running(store):
                    raise errors.CliError(_no_controller_lines(idle, store.prefix))
            problem = feed.failed()
            if problem is not None:
                raise problem
            wake = min(TICK, max(0.0, deadline - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.changed.wait(), wake)
    except asyncio.CancelledError:
        # Ctrl-C: the change is written and the controllers carry on without us.
        print("Operation continuing in the background; follow it with "
              "`swctl service ps NAME`.", file=sys.stderr)
        raise
    finally:
        view.close()
        await feed.close()


def _step(watches: Sequence[ServiceWatch], feed: _Feed, opts: WaitOptions,
          now: float) -> list[str]:
    """Evaluate every unfinished service; returns error lines for those that cannot
    converge."""
    failures: list[str] = []
    nodes = list(feed.nodes.values())
    for w in watches:
        if w.done:
            continue
        newer = feed.services.get((w.namespace, w.name))
        if newer is not None:
            w.refresh(newer)
        said = updatestatus.verdict(w.service, w.asked_rollback)
        w.trust_status = said.updater_reports
        w.header = w.header or said.header
        snap = w.evaluate(list(feed.tasks[(w.namespace, w.name)].values()), nodes)
        if said.outcome == updatestatus.FAILED:
            failures.append(f"{w.ref}: {said.message}")
            continue
        if snap.failure:
            failures.append(f"{w.ref} cannot converge: {snap.failure}")
            continue
        # While the updater says the rollout goes on (or has not picked up a rollback
        # request), running tasks are not the end of it.
        finished = said.outcome == updatestatus.DONE or not said.authoritative
        if snap.converged and not finished:
            w.verify_since = None
            w.verify_text = None
        elif snap.converged:
            if w.verify_since is None:
                w.verify_since = now
                unit = "second" if opts.verify_window == 1 else "seconds"
                w.verify_text = (f"verify: Waiting {opts.verify_window:g} {unit} to verify "
                                 "that tasks are stable...")
            if now - w.verify_since >= opts.verify_window:
                w.done = True
                w.verify_text = "verify: Service converged"
        elif w.verify_since is not None:
            # A task left running during the verify window: Docker's wording, then wait
            # for convergence again.
            w.verify_since = None
            w.verify_text = "verify: Detected task failure"
    return failures


def _timeout_lines(watches: Sequence[ServiceWatch], timeout: float) -> list[str]:
    lines = []
    for w in watches:
        if w.done:
            continue
        snap = w.last
        running = snap.running if snap else 0
        total = len(snap.lines) if snap else 0
        lines.append(f"{w.ref} did not converge within {timeout:g}s: {running} out of "
                     f"{total} tasks running")
        said = updatestatus.verdict(w.service)
        if said.authoritative and said.outcome != updatestatus.DONE and said.message:
            lines.append(f"  the updater says: {said.message}")
        lines.extend("  " + reason for reason in w.stall_reasons())
    lines.append("  the change is written and stays; wait longer with --timeout, or check "
                 "`swctl service ps NAME`")
    return lines


def _no_controller_lines(idle: Sequence[ServiceWatch], prefix: str) -> list[str]:
    names = ", ".join(w.name for w in idle)
    return [f"no task was created for {names} within {NO_CONTROLLER_GRACE:g}s and no "
            f"controller holds a lease under {prefix}/leases/controllers: "
            f"{CONTROLLER_HINT}",
            "  the change is written and will be acted on once the controllers run; use "
            "-d/--detach not to wait"]
