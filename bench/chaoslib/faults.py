"""The seeded fault injector: what to break, for how long, and putting it back.

Every choice (the kind, the victim, the hold, the pause before the next fault) comes from
one ``random.Random(seed)``, so a seed names a run's schedule. Timing still varies with
the machine's load, so a replay repeats the faults, not every interleaving.

Kinds: SIGKILL and SIGSTOP/SIGCONT of a controller-manager, an agent, an agent's
heartbeat child and an etcd member; with the ``--netns`` underlay also ``partition`` (the
node's link down) and ``netem`` (30 % loss and 100 ms delay both ways on it); with
libfaketime (clocks.py) ``clock-jump``: one process's wall clock stepped ±5 min to ±2 h.
Constraints that keep the cluster able to recover:
at most one etcd member down or stopped at a time (quorum holds), at least one
controller-manager untouched, one fault per victim at a time. A killed process is started
again (an agent restarts its own heartbeat child) after the hold; a stopped one continued.
Agent, heartbeat and link faults can take a node down, so they mark the checker
``disturbed`` from the fault until ``DISTURB_GRACE`` after the last such fault is put back.

Each fault's recovery is the time from it being put back to the first moment every
service is at its spec again (``Checker.unconverged`` empty), watched for ``RECOVERY_LIMIT``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import signal
import time

import structlog

from bench.chaoslib import clocks
from bench.chaoslib.cluster import Cluster
from bench.chaoslib.invariants import Checker
from bench.chaoslib.space import Filler, writable_after

log = structlog.get_logger("bench.chaos.faults")

KINDS = ("cm-kill", "cm-stop", "agent-kill", "agent-stop", "heartbeat-kill",
         "heartbeat-stop", "etcd-kill", "etcd-stop")
#: Faults on a node's underlay link: only with the --netns underlay.
NET_KINDS = ("partition", "netem")
#: A wall-clock step of one agent (with its children) or controller-manager: only when
#: the cluster runs them under libfaketime (clocks.py).
CLOCK_KINDS = ("clock-jump",)
NODE_KINDS = ("agent-", "heartbeat-", *NET_KINDS)
#: etcd out of space: only when the members run with a small quota (--etcd-quota).
SPACE_KINDS = ("etcd-full",)
#: How long after a fault is put back its recovery is watched for.
RECOVERY_LIMIT = 300.0
#: After a node fault is put back: the node's heartbeat (TTL 3 s) and the replacement of
#: tasks lost meanwhile settle before the floor counts again (it also waits for the
#: service to converge).
DISTURB_GRACE = 10.0


@dataclasses.dataclass
class Fault:
    kind: str
    victim: str
    at: float
    hold: float
    restored: float | None = None
    error: str | None = None
    pids: list[int] = dataclasses.field(default_factory=list)  # for the stop faults
    recovery: float | None = None  # seconds from restored to every service at its spec
    waited_on: list[str] = dataclasses.field(default_factory=list)  # last not at spec
    #: link faults: seconds from restored until no task on the node that was replaced
    #: meanwhile (desired past running) is still live there (None: none or not seen)
    stale_stopped: float | None = None
    #: partitions: what the node's unended tasks were shown as just before the link
    #: came back (task key -> taskstates.shown_state)
    shown_before_heal: dict[str, str] | None = None
    #: etcd-full: seconds from the junk's deletion until etcd had no NOSPACE alarm left
    #: (Shoal's maintenance loop recovered it; None: not within RECOVERY_LIMIT)
    writable_after: float | None = None
    #: per service not at its spec when the fault was put back: seconds until it first
    #: was again (None: not within the watch)
    service_recovery: dict[str, float | None] = dataclasses.field(default_factory=dict)
    #: clock jumps: the seconds the victim's wall clock was stepped by
    offset: float | None = None


class Injector:
    def __init__(self, cluster: Cluster, checker: Checker, seed: int,
                 hold: tuple[float, float] = (0.5, 5.0),
                 gap: tuple[float, float] = (1.0, 6.0),
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kinds = kinds
        self.cluster = cluster
        self.checker = checker
        self.rng = random.Random(seed)
        self.hold = hold
        self.gap = gap
        self.faults: list[Fault] = []
        self.busy: set[str] = set()
        self._node_faults = 0
        self._grace_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._recoveries: set[asyncio.Task[None]] = set()
        self._fillers: dict[int, Filler] = {}  # id(fault) -> its filler (etcd-full)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(f.kind for f in self.faults))

    def stop_watching(self) -> None:
        """Stop watching recoveries (the run is over); unrecovered faults keep None."""
        for task in self._recoveries:
            task.cancel()

    async def _watch_recovery(self, fault: Fault) -> None:
        assert fault.restored is not None
        deadline = fault.restored + RECOVERY_LIMIT
        watch_stale = fault.kind in NET_KINDS and bool(self.checker.stale_tasks(fault.victim))
        pending = set(self.checker.unconverged())
        fault.service_recovery = {svc: None for svc in pending}
        while time.monotonic() < deadline and (fault.recovery is None or watch_stale
                                               or pending):
            now = time.monotonic()
            pending -= self._services_back(fault, pending, now)
            if fault.recovery is None:
                waiting = self.checker.unconverged()
                if not waiting:
                    fault.recovery = max(0.0, now - fault.restored)
                else:
                    fault.waited_on = waiting
            if watch_stale and not self.checker.stale_tasks(fault.victim):
                fault.stale_stopped = max(0.0, now - fault.restored)
                watch_stale = False
            await asyncio.sleep(0.1)

    def _services_back(self, fault: Fault, pending: set[str], now: float) -> set[str]:
        """Of the services not at their spec when the fault was put back, those at it
        now, each given its first such moment: unlike ``recovery`` (every service at
        once), a service the workload keeps changing elsewhere does not hold up the
        figure of the ones the fault touched."""
        assert fault.restored is not None
        back = pending - set(self.checker.unconverged())
        for svc in back:
            fault.service_recovery[svc] = max(0.0, now - fault.restored)
        return back

    def last_restored(self) -> float:
        return max((f.restored or f.at for f in self.faults), default=0.0)

    def _candidates(self, kind: str) -> list[str]:
        c = self.cluster
        if kind.startswith("cm-"):
            free = [m for m in c.managers if m not in self.busy]
            return free if len(free) > 1 else []  # one controller-manager always untouched
        if kind in NET_KINDS and c.underlay is None:
            return []
        if kind in SPACE_KINDS:
            return ["etcd"] if c.etcd_quota and "etcd" not in self.busy else []
        if kind in CLOCK_KINDS:
            return self._clock_candidates()
        if kind.startswith("etcd-"):
            if any(b.startswith("m") for b in self.busy):
                return []
            return [f"m{i}" for i in range(len(c.etcd.members))]
        # agents and their heartbeat children share the node's busy mark
        return [n for n in c.node_names if n not in self.busy]

    async def run(self, until: float, max_faults: int | None = None) -> None:
        """Inject faults until the monotonic time ``until`` (or ``max_faults``), then
        wait for every one to be put back."""
        try:
            while time.monotonic() < until and (max_faults is None
                                                or len(self.faults) < max_faults):
                kind = self.rng.choice(self.kinds)
                victims = self._candidates(kind)
                hold = self.rng.uniform(*self.hold)
                gap = self.rng.uniform(*self.gap)
                if victims:
                    victim = self.rng.choice(victims)
                    fault = Fault(kind, victim, time.monotonic(), hold)
                    self.faults.append(fault)
                    self.busy.add(victim)
                    task = asyncio.create_task(self._one(fault))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(gap)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, fault: Fault) -> None:
        node_fault = fault.kind.startswith(NODE_KINDS)
        if node_fault:
            self._node_faults += 1
            self.checker.disturb(True, "node faults")
        try:
            await self._inject(fault)
            await asyncio.sleep(fault.hold)
            if fault.kind == "partition":
                fault.shown_before_heal = self.checker.shown_states(fault.victim)
            await self._restore(fault)
        except Exception as exc:  # a fault that could not be done or undone is reported
            fault.error = repr(exc)
            log.error("fault failed", kind=fault.kind, victim=fault.victim, error=repr(exc))
        finally:
            fault.restored = time.monotonic()
            self.busy.discard(fault.victim)
            log.info("fault restored", kind=fault.kind, victim=fault.victim,
                     hold=round(fault.hold, 2))
            if fault.error is None:
                watching = asyncio.create_task(self._watch_recovery(fault))
                self._recoveries.add(watching)
                watching.add_done_callback(self._recoveries.discard)
            if node_fault:
                self._node_faults -= 1
                self._grace_until = time.monotonic() + DISTURB_GRACE
                asyncio.get_running_loop().call_later(DISTURB_GRACE + 0.1, self._undisturb)

    def _undisturb(self) -> None:
        if self._node_faults == 0 and time.monotonic() >= self._grace_until:
            self.checker.disturb(False, "node faults")

    async def _fill(self, fault: Fault) -> None:
        """etcd-full: fill etcd to its NOSPACE alarm and keep it there (``space``)."""
        assert self.cluster.bundle is not None
        filler = Filler(self.cluster.etcd.urls, self.cluster.bundle)
        self._fillers[id(fault)] = filler
        await filler.start()

    async def _empty(self, fault: Fault) -> None:
        """etcd-full put back: the junk deleted; Shoal's maintenance loop recovers."""
        filler = self._fillers.pop(id(fault), None)
        if filler is None:
            return
        await filler.stop()
        since = time.monotonic()

        async def watch() -> None:
            fault.writable_after = await writable_after(
                filler.urls, filler.bundle, since, RECOVERY_LIMIT)

        watching = asyncio.create_task(watch())
        self._recoveries.add(watching)
        watching.add_done_callback(self._recoveries.discard)

    def _pids(self, fault: Fault) -> list[int]:
        c = self.cluster
        if fault.kind.startswith("etcd-"):
            pid = c.etcd_pid(int(fault.victim[1:]))
            return [] if pid is None else [pid]
        if fault.kind.startswith("heartbeat-"):
            return c.children(fault.victim)
        pid = c.pid(fault.victim)
        return [] if pid is None else [pid]

    def _clock_candidates(self) -> list[str]:
        c = self.cluster
        if c.clocks is None:
            return []
        return [p for p in [*c.managers, *c.node_names] if p not in self.busy]

    def _jump_clock(self, fault: Fault) -> None:
        """Step the victim's wall clock by ±5 min to ±2 h (drawn now, from the seed)."""
        assert self.cluster.clocks is not None
        size = self.rng.uniform(*clocks.JUMP)
        fault.offset = size if self.rng.random() < 0.5 else -size
        self.cluster.clocks.set(fault.victim, fault.offset)

    def _restore_clock(self, fault: Fault) -> None:
        assert self.cluster.clocks is not None
        self.cluster.clocks.set(fault.victim, 0.0)

    async def _inject(self, fault: Fault) -> None:
        log.info("fault", kind=fault.kind, victim=fault.victim, hold=round(fault.hold, 2))
        c = self.cluster
        if fault.kind in SPACE_KINDS:
            await self._fill(fault)
        elif fault.kind in CLOCK_KINDS:
            self._jump_clock(fault)
        elif fault.kind in NET_KINDS:
            assert c.underlay is not None
            cut = c.underlay.cut if fault.kind == "partition" else c.underlay.degrade
            await asyncio.to_thread(cut, fault.victim)
        elif fault.kind == "etcd-kill":
            c.etcd.kill(int(fault.victim[1:]))
        elif fault.kind in ("cm-kill", "agent-kill"):
            c.kill(fault.victim)
        else:
            sig = signal.SIGKILL if fault.kind.endswith("-kill") else signal.SIGSTOP
            fault.pids = self._pids(fault)
            for pid in fault.pids:
                c.signal_pid(pid, sig)

    async def _restore(self, fault: Fault) -> None:
        c = self.cluster
        if fault.kind in SPACE_KINDS:
            await self._empty(fault)
        elif fault.kind in CLOCK_KINDS:
            self._restore_clock(fault)
        elif fault.kind in NET_KINDS:
            assert c.underlay is not None
            heal = c.underlay.heal if fault.kind == "partition" else c.underlay.restore
            await asyncio.to_thread(heal, fault.victim)
        elif fault.kind == "etcd-kill":
            await asyncio.to_thread(c.etcd.start, int(fault.victim[1:]), 60.0)
        elif fault.kind in ("cm-kill", "agent-kill"):
            c.start(fault.victim)
        elif fault.kind.endswith("-stop"):
            for pid in fault.pids:
                c.signal_pid(pid, signal.SIGCONT)
        # heartbeat-kill: the agent starts a new heartbeat child by itself
