"""The node's dataplane, built from etcd: overlay, task attachments, load balancer, DNS.

One :class:`Dataplane` per (real) node agent. It follows Networks, Services, Tasks and
Nodes of the whole cluster through the runtime's informers (remote tasks are the
overlay's remote endpoints and the balancer's backends) -- Services and Tasks as their
dataplane projections (``<p>/dataplane/``, ``shoal.store.projections``): only the fields
a plan reads, with no template, environment or secret reference of another node's task,
which a worker's etcd user may not read (docs/security.md). Of each task it keeps only its
``netplan.TaskEntry`` (an ``informer.KeptInformer``), not the object. It asks ``netplan``
what the node should hold, and applies it with the ``shoal.net`` building blocks:
``OverlayNode`` (bridges, VXLANs, FDB/neighbours, veths into the tasks' namespaces), the
load balancer the kernel supports (IPVS, else nftables; reported as
``Node.status.dataplane``) and the ``DnsServer`` listening on the node's address on each
network.

Work follows the change, not the cluster. The informers feed a ``planindex.PlanIndex``
(tasks by service and by network, peers per network, dirty marks); a change marks what
it touches and one loop (debounced) asks the index for the difference -- one service's
VirtualServices and DNS record, one network's peers and attachments -- and applies only
that: ``lb.update_service``/``remove_service``, ``DnsTable.set``/``remove``,
``OverlayNode.update_network`` (a few FDB/neighbour requests) or ``sync_networks`` for the
networks whose hosting changed. ``netplan.plan`` stays the reference: the start-up pass
and the periodic one (every ``resync_every`` s, or less often when a full pass costs more
than ``resync_budget`` of a CPU: ``resyncpace``) compute the full plan, compare it with
the index's state (a difference is a bug: logged as an error with what differed, then
the full plan is applied), and repair kernel drift nobody announced (someone deleting a
route or an element by hand): the overlay's thorough sync and the balancer's ``repair``
report what they fixed, logged as "dataplane drift repaired". A pass that fails leaves
the next one to apply the full plan. ``incremental=False`` forces the full plan on every
change (the old behaviour; the bench's baseline and the tests' reference).

Each building block changes only what differs from the kernel's (or its own model's)
state, so an agent restart with unchanged objects changes nothing -- except the nftables
table, which a restarted agent writes once atomically with the same content (its
conntrack entries, hence established connections, are untouched).

The task manager calls four hooks (``taskmanager.TaskNetworking``):

* ``waiting_for(task)`` before starting a task: the task stays ``preparing`` while its
  networks (or this node's address on them) are not allocated;
* ``workload_spec(task, spec)``: the container gets a generated ``/etc/resolv.conf``
  (bind mount) naming this node's DNS responder -- dockerd writes none for containers
  without networking;
* ``attach(task, observed)`` once the workload runs (pid known): the task's veths are
  plumbed before the task is reported running;
* ``detach(task)`` before a task is stopped (shut down, or unhealthy): it leaves this
  node's balancer first, so no new connection reaches a dying task; then, if it was a
  backend (observed running), the hook waits ``drain`` seconds before the task manager
  stops it. Every other node takes the task out of its own balancer when it sees the
  task's desired state change in etcd, at about the same moment but not before; stopping
  at once would let the slowest node send a new connection to a dead address (measured:
  a few failed requests per rolling update through the routing mesh), and connections
  already in flight would be cut. Swarm waits 2 s here for its gossip to converge;
  Shoal's nodes learn from one etcd watch, so 1 s by default (``--drain``).

What stays when the agent stops: everything in the kernel. Tasks keep their network and
established connections keep flowing while no agent runs; the next agent adopts it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import structlog

from shoal.agent import netplan, nodereport, planindex, resyncpace
from shoal.agent.exec.executor import Observed, TaskSpec
from shoal.crds import kinds, resource
from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.crds import template as tpl
from shoal.net import lb as lb_mod
from shoal.net import lb_factory, naming
from shoal.net import netns as netns_mod
from shoal.net import overlay as overlay_mod
from shoal.net.dns import DnsServer, DnsTable
from shoal.net.hostfw import HostFirewall
from shoal.net.overlay import OverlayNode
from shoal.runtime import informer as informer_mod
from shoal.store import client, projections

log = structlog.get_logger("shoal.agent.dataplane")

DEBOUNCE = 0.05  # seconds: a burst of watch events is applied as one pass
# An incremental pass costs what its changes touch, so a burst split over a few passes
# costs little more than one; the wait is mostly latency.
INCREMENTAL_DEBOUNCE = 0.005
RESYNC_EVERY = 30.0  # seconds: the least time between passes nobody asked for (drift repair)
ATTACH_WAIT = 5.0  # seconds an attach waits for this agent's caches to see the task
DNS_PORT = 53
# Beyond this many VirtualServices changed at once, one balancer sync (a single
# transaction diffed against its model) is cheaper than one transaction each.
LB_BATCH = 64
DRAIN = 1.0  # seconds a backend keeps running after leaving the balancer (see above)
RESOLV_TARGET = "/etc/resolv.conf"
FIREWALL_EVERY = 2.0  # seconds: the host firewall is re-checked at most this often
FIREWALL_CONDITION = "Firewall"  # on the Node: can Shoal's traffic pass the host firewall

Observe = Callable[[str], Awaitable[Observed]]
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


class NotPlumbedError(RuntimeError):
    """A running task's network could not be plumbed yet; the task manager retries."""


class Dataplane:
    """The dataplane of one node. ``netns`` is the namespace to program (None: the
    agent's own, the normal case); ``observe`` is the executor's, for finding the
    workloads of tasks that were running before this agent started."""

    def __init__(self, store: client.Store, node: str, underlay: str, *,
                 observe: Observe, backend: lb_mod.BackendName | None = None,
                 netns: str | None = None, state_dir: Path | str = "/run/shoal",
                 dns_port: int = DNS_PORT, drain: float = DRAIN,
                 reports: nodereport.NodeReports | None = None,
                 resync_every: float = RESYNC_EVERY,
                 resync_budget: float = resyncpace.BUDGET, incremental: bool = True) -> None:
        self.store = store
        self.reports = reports  # where the backend and Firewall condition are reported
        self.node = node
        self.underlay = underlay
        self.netns = netns
        self.observe = observe
        self.state_dir = Path(state_dir) / node
        self.dns_port = dns_port
        self.drain = drain
        self.resync_every = resync_every
        # When the next periodic pass is due: no sooner than resync_every, and later when
        # a full pass costs more than resync_budget of a CPU (resyncpace.py says why).
        self.pacer = resyncpace.ResyncPacer(resync_every, time.monotonic(),
                                            budget=resync_budget)
        self._logged_interval: resyncpace.Interval | None = None
        # False: every change re-plans the whole cluster (netplan.plan), as before the
        # index existed. Only the bench (its baseline) and tests set it.
        self.incremental = incremental
        self.index = planindex.PlanIndex(node)
        self._need_full = True  # the next pass applies the full plan
        self._problems: tuple[str, ...] = ()
        self._backend_choice = backend
        registry = kinds.Registry.builtin()
        self._nodes_info = registry.lookup("nodes")
        self.factory = informer_mod.SharedInformerFactory(store)
        self.projected = informer_mod.SharedInformerFactory(
            store.view(projections.DATAPLANE_DIR))
        self.networks = self.factory.informer(registry.lookup("networks"))
        self.services = self.projected.informer(registry.lookup("services"))
        # Every task of the cluster, as what a plan reads of it (netplan.TaskEntry), not
        # as a Resource: at 100,000 tasks the objects were half the agent's memory. The
        # index is fed the same entries (one per task in memory, shared) and the full
        # plan reads this cache, not the index: the reference stays a separate copy.
        self.tasks: informer_mod.KeptInformer[netplan.TaskEntry] = \
            informer_mod.KeptInformer(self.projected.store, registry.lookup("tasks"),
                                      netplan.task_entry)
        self.nodes = self.factory.informer(self._nodes_info)
        self.overlay = OverlayNode(underlay, netns=netns)
        self.firewall = HostFirewall(netns, underlay)
        self.firewall_problems: tuple[str, ...] = ()
        # Overlay networks this node refuses to build (their subnet is the host's own),
        # by name: their tasks are never reported running.
        self.refused_networks: dict[str, str] = {}
        self.overlay_warnings: list[str] = []
        self._localnet: set[str] = set()  # bridges with route_localnet set
        self._firewall_checked = 0.0
        self._firewall_recheck: asyncio.TimerHandle | None = None
        self._firewall_reported: tuple[str, ...] | None = None
        self.lb: lb_mod.LoadBalancer | None = None
        self.dns = DnsServer(DnsTable())
        self.log = log.bind(node=node)
        self.pids: dict[str, int] = {}  # task uid -> workload pid (local tasks)
        self.leaving: set[str] = set()  # local task uids taken out of the balancer
        # The last full plan applied; kept only on the full-plan path (incremental=False),
        # which reads it between passes: at 100,000 tasks it holds as many peers.
        self.plan: netplan.Plan | None = None
        self._ready = False  # a first pass has been applied
        self.passes = 0
        self.changes = 0  # kernel changes the overlay made, in all passes
        self.touch: Callable[[str], None] | None = None  # the task manager's requeue
        self._waiting: set[str] = set()  # task keys told to wait for networks
        self._listening: dict[str, ipaddress.IPv4Address] = {}  # network -> DNS address
        self._lock = asyncio.Lock()
        self._asked = 0  # tickets handed to hooks (see sync's ``covering``)
        self._applied = 0  # the newest ticket a finished pass planned with
        self._passed = asyncio.Event()  # set (and replaced) as each pass finishes
        self._dirty = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._detach_handlers: list[Callable[[], None]] = []
        # A previous agent may have left links and a balancer table: look once.
        self._lb_active = True
        self._overlay_active = True
        self._firewall_active = True

    @property
    def backend_name(self) -> str:
        return self.lb.backend_name if self.lb is not None else "none"

    # --- life cycle ---

    async def start(self) -> None:
        """Caches synced, balancer chosen and reported, local workloads found, the
        first pass applied; then follow changes."""
        self.factory.start()
        self.projected.start()
        self.tasks.start()
        for inf in (self.networks, self.services, self.tasks, self.nodes):
            await inf.wait_synced()
        chosen = self._backend_choice or await asyncio.to_thread(
            lb_factory.detect_backend, self.netns)
        self.lb = lb_factory.make_load_balancer(chosen, netns=self.netns)
        await self._report_backend()
        await self._discover_workloads()
        if self.incremental:
            # Added after the caches synced: each is first called with every cached object.
            self._feed(self.networks, self.index.put_network)
            self._feed(self.services, self.index.put_service)
            self._feed(self.nodes, self.index.put_node)
            self._detach_handlers.append(self.tasks.add_handler(self._task_entry))
        await self._first_pass()
        if not self.incremental:
            for inf in (self.networks, self.services, self.nodes):
                self._detach_handlers.append(inf.add_handlers(
                    lambda _o: self._changed(), lambda _o, _n: self._changed(),
                    lambda _o: self._changed()))
            # Called only when what a plan reads of a task changed: most task updates
            # are state reports (assigned, preparing, starting...) that change none of it.
            self._detach_handlers.append(self.tasks.add_handler(
                lambda _key, _old, _new: self._changed()))
        # A task told to wait for its networks is looked at again when they change.
        self._detach_handlers.append(self.networks.add_handlers(
            lambda _o: self._poke_waiting(), lambda _o, _n: self._poke_waiting(), None))
        self._loop_task = asyncio.create_task(self._run(), name=f"dataplane:{self.node}")
        self.log.info("dataplane ready", backend=self.backend_name,
                      networks=sorted(self.index.applied_networks) if self.incremental
                      else [n.name for n in (self.plan.overlay.networks
                                             if self.plan else ())])

    def _feed(self, inf: informer_mod.Informer,
              put: Callable[[informer_mod.CacheKey, resource.Resource | None], object]
              ) -> None:
        """Informer events into the index; each wakes the loop."""
        def key(obj: resource.Resource) -> informer_mod.CacheKey:
            return (obj.metadata.namespace, obj.metadata.name)

        def upsert(obj: resource.Resource) -> None:
            put(key(obj), obj)
            self._changed()

        def delete(obj: resource.Resource) -> None:
            put(key(obj), None)
            self._changed()
        self._detach_handlers.append(inf.add_handlers(
            upsert, lambda _old, new: upsert(new), delete))

    def _task_entry(self, key: informer_mod.CacheKey, _old: netplan.TaskEntry | None,
                    new: netplan.TaskEntry | None) -> None:
        """A task's entry changed (the cache calls only then): into the index, and the
        loop woken if the index says a plan reads the change."""
        if self.index.put_task(key, new):
            self._changed()

    async def close(self) -> None:
        """Stop following etcd; the kernel state stays (see the module docstring)."""
        for remove in self._detach_handlers:
            remove()
        if self._firewall_recheck is not None:
            self._firewall_recheck.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        await self.dns.close()
        if self.lb is not None:
            await self.lb.close()
        await self.factory.stop()
        await self.projected.stop()
        await self.tasks.stop()

    async def _report_backend(self) -> None:
        """``status.dataplane`` on our Node (through the node report, folded into the
        Node), for ``swctl get nodes -o wide``."""
        if self.reports is not None:
            self.reports.set_fields(self.node, dataplane=self.backend_name)

    async def _discover_workloads(self) -> None:
        """Pids of local tasks that already run (a restarted agent): without them the
        first pass would take their veths away."""
        for (namespace, name), entry in self._local_tasks():
            try:
                observed = await self.observe(entry.uid)
            except Exception as exc:  # the driver's daemon may be slow to answer
                self.log.warning("cannot observe a workload", key=f"task/{namespace}/{name}",
                                 error=str(exc))
                continue
            if observed.state == "running" and observed.pid:
                self.pids[entry.uid] = observed.pid

    # --- the loop ---

    def _changed(self) -> None:
        self._dirty.set()

    def _poke_waiting(self) -> None:
        if self.touch is not None:
            for key in list(self._waiting):
                self.touch(key)

    async def _first_pass(self) -> None:
        """The first pass, retried like every later one: a transient netlink failure
        (pyroute2's namespace helper timing out under load, a namespace vanishing) must
        not kill the agent at start-up, only delay its "dataplane ready"."""
        backoff = 0.2
        while True:
            try:
                await self.sync("start")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("first dataplane pass failed; retrying", error=str(exc),
                                 error_type=type(exc).__name__, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            # Due from the last periodic pass, not the last pass: a steady stream of
            # changes must not put the safety net off for ever.
            wait = self.pacer.wait(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=wait)
            await asyncio.sleep(INCREMENTAL_DEBOUNCE if self.incremental else DEBOUNCE)
            self._dirty.clear()
            resync = self.pacer.is_due(time.monotonic())
            try:
                await self.sync("periodic" if resync else "change")
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A task namespace that vanished mid-pass, netlink busy...: look again,
                # and let the periodic pass look at everything soon.
                self.pacer.failed(time.monotonic())
                self.log.warning("dataplane pass failed; retrying", error=str(exc),
                                 error_type=type(exc).__name__, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._dirty.set()

    async def sync(self, reason: str = "change", covering: int | None = None) -> None:
        """Plan from the caches and apply; serialised (hooks and the loop share it).

        ``covering`` is a hook's ticket (``_ask``): a pass that began planning after the
        hook's change already carries it, so the hook does not run one more. Tasks that
        start or stop together then share passes instead of queueing one each behind
        the lock (five tasks of a batch: two passes instead of five). While a pass runs,
        a hook waits for passes to finish rather than for the lock: the lock's next
        holder may be a pass its ticket does not need (the loop's, after a watch event),
        and 30 tasks attached at once waited 0.8 s for one so (bench/stack.py)."""
        if covering is not None:
            while self._lock.locked() and not self._covered(covering):
                await self._passed.wait()
            if self._covered(covering):
                return
        async with self._lock:
            try:
                await self._pass(reason, covering)
            finally:
                # Waiting hooks look again, also after a pass that failed.
                self._passed.set()
                self._passed = asyncio.Event()

    async def _pass(self, reason: str, covering: int | None) -> None:
        """One pass (``sync`` holds the lock): the index's difference, or the full plan
        (start-up, periodic, after a failed pass, or always when not incremental)."""
        if covering is not None and self._covered(covering):
            return
        asked = self._asked
        self._prune()
        self.passes += 1
        full = (reason in ("start", "periodic") or not self.incremental
                or self._need_full)
        wall, cpu = time.monotonic(), time.process_time()
        drift = False
        try:
            if self.incremental and (reason == "periodic" or not full):
                await self._apply_delta(self.index.step(self.pids, self.leaving), reason)
            if full:
                drift = await self._full_pass(reason)
        except BaseException:
            self._need_full = self.incremental
            raise
        self._need_full = False
        self._applied = max(self._applied, asked)
        if reason in ("start", "periodic"):
            now = time.monotonic()
            self._paced(reason, resyncpace.Cost(wall=now - wall,
                                                cpu=time.process_time() - cpu),
                        drift=drift, now=now)

    def _paced(self, reason: str, cost: resyncpace.Cost, *, drift: bool, now: float
               ) -> None:
        """The next periodic pass set from this full pass's cost; logged when the
        interval or its reason changes (by a fifth or more), not every pass."""
        interval = self.pacer.passed(now, cost, drift=drift)
        last = self._logged_interval
        if (last is None or last.why != interval.why
                or abs(interval.seconds - last.seconds) >= 0.2 * last.seconds):
            self.log.info("next periodic dataplane pass", after=round(interval.seconds, 1),
                          why=interval.why, reason=reason, pass_wall=round(cost.wall, 3),
                          pass_cpu=round(cost.cpu, 3), budget=self.pacer.budget)
            self._logged_interval = interval

    async def _full_pass(self, reason: str) -> bool:
        """Plan from every cached object and apply it whole; compare with the index.
        Whether a periodic pass found drift (the index wrong, or the kernel changed)."""
        drift = False
        plan = netplan.plan_entries(self.node, self.networks.list(), self.services.list(),
                                    self.tasks.values(), self.nodes.list(), self.pids,
                                    frozenset(self.leaving))
        if self.incremental:
            self.index.step(self.pids, self.leaving)  # catch up; the full plan is applied
            if reason == "periodic" or not self._ready:
                differ = planindex.differences(self.index.snapshot(), plan)
                if differ:
                    self.log.error("incremental dataplane plan differed from the full "
                                   "plan; applying the full plan", reason=reason,
                                   differences=differ)
                    self.index.rebuild()
                    self.index.step(self.pids, self.leaving)
                    drift = True
        thorough = reason in ("start", "periodic")
        if plan.overlay.networks or self._overlay_active:
            # Only start-up and periodic passes look into every task's namespace
            # again (overlay.py says why); attach and detach passes are frequent.
            report = await self.overlay.sync(plan.overlay, thorough=thorough)
            self._overlay_active = bool(plan.overlay.networks)
            self._note_refused(report.refused, replace=True)
            # Logged when they change, not every pass: a device that refuses an offload
            # refuses it on every pass. A quick pass looks at few links, so only a
            # thorough one can say the problems are gone.
            if report.warnings != self.overlay_warnings and (
                    report.warnings or reason in ("start", "periodic")):
                if report.warnings:
                    self.log.warning("overlay devices not as wanted",
                                     problems=report.warnings)
                self.overlay_warnings = list(report.warnings)
            if report:
                self.changes += len(report.changes)
                if reason == "periodic" and self.incremental:
                    self._log_drift("overlay", report.changes, plan.overlay.networks)
                    drift = True
                else:
                    self.log.info("overlay changed", reason=reason,
                                  changes=len(report.changes), first=report.changes[:5])
        await self._apply_lb(plan)
        if reason == "periodic" and self.lb is not None and self._lb_active:
            repaired = await self.lb.repair()
            if repaired:
                self._log_drift("balancer", repaired, plan.overlay.networks)
                drift = True
        await self._apply_firewall(bool(plan.overlay.networks or plan.services),
                                   force=thorough)
        await self._apply_localnet([n.name for n in plan.overlay.networks])
        self.dns.table.set_clients(plan.clients)
        self.dns.table.replace_all(plan.dns)
        await self._apply_listeners(plan.listeners)
        self._note_problems(plan.problems)
        self.plan = None if self.incremental else plan
        self._ready = True
        return drift and reason == "periodic"

    async def _apply_delta(self, delta: planindex.Delta, reason: str) -> None:
        """Apply what the index says changed, and nothing else."""
        if not delta:
            return
        changes: list[str] = []
        for change in delta.networks:
            changes += await self._apply_network(change)
        if changes:
            self.changes += len(changes)
            self.log.info("overlay changed", reason=reason, changes=len(changes),
                          first=changes[:5])
        self._overlay_active = self._overlay_active or bool(self.index.applied_networks)
        await self._apply_lb_delta(delta)
        if delta.records or delta.removed_records:
            for namespace, name in delta.removed_records:
                self.dns.table.remove(namespace, name)
            for record in delta.records:
                self.dns.table.set(record)
        if delta.clients is not None:
            self.dns.table.set_clients(delta.clients)
        hosting = bool(self.index.applied_networks or self.index.applied_services)
        await self._apply_firewall(hosting, force=False)
        await self._apply_localnet(list(self.index.applied_networks))
        if delta.listeners is not None:
            await self._apply_listeners(delta.listeners)
        self._note_problems(self.index.problems())
        if delta.touched:
            self.log.debug("dataplane changed", reason=reason,
                           keys=[f"service/{ns}/{n}" for ns, n in sorted(delta.touched)[:20]])

    async def _apply_network(self, change: planindex.NetworkChange) -> list[str]:
        old, new = change.old, change.new
        if new is None:
            assert old is not None
            self.refused_networks.pop(old.name, None)
            return (await self.overlay.remove_network(old)).changes
        out: list[str] = []
        if new.name in self.refused_networks and not change.full:
            # Never built: try it whole again (it is refused again while the clash lasts).
            change = planindex.NetworkChange(old, dataclasses.replace(
                new, peers=tuple(self.index.peers(new.name))), full=True)
            new = change.new
            assert new is not None
        if change.full:
            gone: list[tuple[str, str]] = []
            if old is not None:
                if old.vni != new.vni:
                    out += (await self.overlay.remove_network(old)).changes
                else:
                    keys = {a.key for a in new.attachments}
                    gone = [(old.name, a.key) for a in old.attachments if a.key not in keys]
            report = await self.overlay.sync_networks([new], gone=gone)
            self._note_refused(report.refused, networks=[new.name])
            return out + report.changes
        assert old is not None
        return (await self.overlay.update_network(old, new, added=change.added,
                                                  removed=change.removed)).changes

    async def _apply_lb_delta(self, delta: planindex.Delta) -> None:
        assert self.lb is not None
        wanted = self.index.applied_services
        if not wanted:
            if self._lb_active:
                await self.lb.teardown()
                self._lb_active = False
            return
        if not (delta.services or delta.removed_services) and self._lb_active:
            return
        if not self._lb_active or len(delta.services) + len(delta.removed_services) > LB_BATCH:
            await self.lb.sync(list(wanted.values()))
            self._log_adoption()
        else:
            for key in delta.removed_services:
                await self.lb.remove_service(key)
            for svc in delta.services:
                await self.lb.update_service(svc)
        self._lb_active = True

    def _note_refused(self, refused: dict[str, str], *, replace: bool = False,
                      networks: list[str] | None = None) -> None:
        now = dict(refused) if replace else dict(self.refused_networks)
        if not replace:
            for name in networks or ():
                now.pop(name, None)
            now.update(refused)
        if now != self.refused_networks:
            for name, why in now.items():
                if self.refused_networks.get(name) != why:
                    self.log.error("overlay network refused", network=name, reason=why)
            self.refused_networks = now

    def _note_problems(self, problems: tuple[str, ...]) -> None:
        if problems and sorted(problems) != sorted(self._problems):
            self.log.warning("dataplane incomplete", problems=list(problems))
        self._problems = problems

    def _log_drift(self, part: str, repaired: list[str],
                   networks: tuple[overlay_mod.OverlayNetwork, ...]) -> None:
        """What a periodic pass found changed in the kernel behind Shoal's back."""
        keys: set[str] = set()
        # A balancer line names a VIP: its service, from the index (rare, so a walk).
        by_vip = {str(vkey[0]): skey for skey, claimed in self.index.svc_claims.items()
                  for vkey in claimed if vkey[0] is not None} if part == "balancer" else {}
        for line in repaired:
            for net in networks:
                if (f"vni {net.vni}" in line or naming.bridge_name(net.vni) in line
                        or naming.vxlan_name(net.vni) in line):
                    keys.add(f"network/{net.name}")
            for address in _ADDRESS.findall(line):
                if address in by_vip:
                    keys.add("service/{}/{}".format(*by_vip[address]))
        self.log.warning("dataplane drift repaired", part=part, count=len(repaired),
                         repaired=repaired[:20], keys=sorted(keys))

    def _covered(self, ticket: int) -> bool:
        return self._ready and self._applied >= ticket

    def _ask(self) -> int:
        """A ticket for a change a hook just made to ``pids`` or ``leaving``."""
        self._asked += 1
        return self._asked

    async def _apply_lb(self, plan: netplan.Plan) -> None:
        assert self.lb is not None
        if not plan.services:
            # Nothing to balance: no table at all (also whatever an earlier agent left).
            if self._lb_active:
                await self.lb.teardown()
                self._lb_active = False
            return
        await self.lb.sync(list(plan.services))
        self._log_adoption()
        self._lb_active = True

    def _log_adoption(self) -> None:
        """A first sync that adopted the kernel state an earlier agent left and found it
        drifted (changed while no agent ran, or by an older Shoal): logged as drift."""
        assert self.lb is not None
        adopted = self.lb.adoption_report()
        if adopted:
            self._log_drift("balancer", adopted, ())

    async def _apply_firewall(self, hosting: bool, *, force: bool) -> None:
        """Our ACCEPT rules in a host firewall we do not own (``net/hostfw.py``) while
        the node hosts anything; exactly ours removed when it hosts nothing. Re-checked
        on every pass (at most every FIREWALL_EVERY s): Docker re-creates its chains."""
        if not hosting and not self._firewall_active:
            return
        now = time.monotonic()
        # The interval only paces re-checks of rules in place: rules a pass removed (the
        # node hosted nothing for a moment) go back at once, not an interval later.
        if (hosting and self._firewall_active and not force
                and now - self._firewall_checked < FIREWALL_EVERY):
            # Checked a moment ago: look again once the interval is over, so a change
            # (Docker restarting) seen in a burst of passes is not left to the periodic one.
            if self._firewall_recheck is None:
                self._firewall_recheck = asyncio.get_running_loop().call_later(
                    FIREWALL_EVERY, self._recheck_firewall)
            return
        report = await (self.firewall.ensure() if hosting else self.firewall.remove())
        self._firewall_checked = now
        self._firewall_active = hosting
        if report.changes:
            self.log.info("host firewall changed", hosting=hosting,
                          changes=report.changes)
        self.firewall_problems = tuple(report.problems)
        if self.firewall_problems != self._firewall_reported:
            if self.firewall_problems:
                self.log.warning("host firewall blocks Shoal's traffic",
                                 problems=list(self.firewall_problems))
            await self._report_firewall()

    def _recheck_firewall(self) -> None:
        self._firewall_recheck = None
        self._changed()

    async def _report_firewall(self) -> None:
        """Condition ``Firewall`` on our Node: False (reason ``Blocked``) with what the
        agent could not do, so a timing-out overlay is explained where users look."""
        problems = self.firewall_problems
        ok = not problems
        if self.reports is not None:
            self.reports.set_condition(self.node, FIREWALL_CONDITION, ok,
                                       "Admitted" if ok else "Blocked", "; ".join(problems))
        self._firewall_reported = problems

    async def _apply_localnet(self, hosted: list[str]) -> None:
        """``route_localnet`` on the ingress bridge, so a connection to 127.0.0.1:<published
        port> made on this node, translated to a task's address, may leave through it
        (and be masqueraded); martian 127/8 arriving elsewhere is dropped by the
        balancer's table."""
        if self.backend_name != "nftables":
            return  # IPVS: loopback-sourced connections are not balanced (docs/networking.md)
        ingress = nw.ingress_name(self.networks.list())
        info = (nw.network_info(net) if ingress in hosted
                and (net := self.networks.get(ingress or "")) is not None else None)
        bridges = {naming.bridge_name(info.vni)} if info is not None else set()
        self._localnet &= bridges  # a bridge made again starts with the default
        for bridge in bridges - self._localnet:
            try:
                await netns_mod.set_sysctl(self.netns,
                                           f"net/ipv4/conf/{bridge}/route_localnet", "1")
                self._localnet.add(bridge)
            except (OSError, RuntimeError) as exc:
                self.log.warning("cannot set route_localnet", bridge=bridge, error=str(exc))

    async def _apply_listeners(self, listeners: Mapping[str, ipaddress.IPv4Address]
                               ) -> None:
        for network in self.dns.networks:
            if network not in listeners:
                await self.dns.unlisten(network)
        for network, address in listeners.items():
            if self._listening.get(network) == address and network in self.dns.networks:
                continue
            try:
                await self.dns.listen(network, str(address), self.dns_port, netns=self.netns)
                self._listening[network] = address
            except OSError as exc:
                self.log.warning("DNS listener failed", network=network,
                                 address=str(address), error=str(exc))

    def _local_tasks(self) -> list[tuple[informer_mod.CacheKey, netplan.TaskEntry]]:
        """This node's attached tasks that have not ended (the only ones with entries)."""
        return [(k, e) for k, e in self.tasks.items() if e.node == self.node]

    def _prune(self) -> None:
        """Forget local tasks that ended or are gone, and pids whose process died (its
        namespace went with it; plumbing into it would fail the whole pass)."""
        if self.incremental:
            # The index knows this node's attached, not ended tasks: no walk over every
            # cached task (pids and resolv files exist only for attached ones).
            alive = set(self.index.local_uid)
        else:
            alive = {e.uid for _, e in self._local_tasks()}
        for uid in list(self.pids):
            if uid not in alive or not os.path.exists(f"/proc/{self.pids[uid]}/ns/net"):
                del self.pids[uid]
        self.leaving &= alive
        resolv = self.state_dir / "resolv"
        if resolv.is_dir():
            for path in resolv.iterdir():
                if path.stem not in alive:
                    with contextlib.suppress(OSError):
                        path.unlink()

    # --- task manager hooks ---

    def waiting_for(self, task: resource.Resource) -> str | None:
        key = ts.task_key(task)
        service = self.services.get(ts.service_name(task) or "", ts.namespace_of(task))
        why = netplan.waiting_for(task, service, {n.name: n for n in self.networks.list()},
                                  self.node)
        if why is None:
            self._waiting.discard(key)
        else:
            self._waiting.add(key)
        return why

    def workload_spec(self, task: resource.Resource, spec: TaskSpec) -> TaskSpec:
        server = netplan.nameserver(task, {n.name: n for n in self.networks.list()},
                                    self.node)
        if server is None:
            return spec  # no service DNS for it
        try:
            if any(m.target == RESOLV_TARGET for m in tpl.mounts(spec.template)) or any(
                    f.target == RESOLV_TARGET for f in spec.files):
                return spec  # the user brings their own (a mount, or a config)
        except tpl.TemplateError:
            return spec  # the driver rejects the task, naming the mount that is wrong
        path = self.state_dir / "resolv" / task.metadata.uid
        path.parent.mkdir(parents=True, exist_ok=True)
        # ndots:0: a single-label name (a service) is tried as is, first.
        content = f"nameserver {server}\noptions ndots:0\n"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(content)
        tmp.replace(path)
        mount = {"type": "bind", "source": str(path), "target": RESOLV_TARGET,
                 "readOnly": True}
        mounts = spec.template.get("mounts") or []  # kept as written, for the driver
        return dataclasses.replace(spec, template={**spec.template,
                                                   "mounts": [*mounts, mount]})

    async def attach(self, task: resource.Resource, observed: Observed) -> None:
        """Plumb a running task's networks before it is reported running."""
        uid = task.metadata.uid
        if not nw.task_attachments(task) or observed.pid is None:
            return
        if self.firewall_problems:
            # Its network would time out: say why instead of reporting it running.
            raise NotPlumbedError(f"the host firewall blocks the networks of {_ref(task)}: "
                                  + "; ".join(self.firewall_problems))
        self._refuse_if_host_subnet(task)
        if self.pids.get(uid) == observed.pid and self._plumbed(uid):
            return
        self.pids[uid] = observed.pid
        deadline = time.monotonic() + ATTACH_WAIT
        while True:
            await self.sync("attach", covering=self._ask())
            self._refuse_if_host_subnet(task)
            if self._plumbed(uid):
                self.log.info("task attached", key=_ref(task), pid=observed.pid)
                return
            if time.monotonic() > deadline:
                problems = "; ".join(self._problems)
                raise NotPlumbedError(f"the networks of {_ref(task)} are not plumbed yet"
                                      + (f" ({problems})" if problems else ""))
            await asyncio.sleep(0.1)  # our caches have not seen the allocation yet

    def _refuse_if_host_subnet(self, task: resource.Resource) -> None:
        """A task on a network this node refused to build is never reported running."""
        refused = [self.refused_networks[a.network] for a in nw.task_attachments(task) or []
                   if a.network in self.refused_networks]
        if refused:
            raise NotPlumbedError("; ".join(refused))

    def _plumbed(self, uid: str) -> bool:
        if self.incremental:
            return self.index.plumbed(uid)
        return self.plan is not None and any(
            a.key == uid for n in self.plan.overlay.networks for a in n.attachments)

    async def detach(self, task: resource.Resource) -> None:
        """Take a local task out of the balancer before it is stopped; if it was a
        backend, return only after the drain period (see the module docstring).

        A restarted agent that finds the task still running detaches and drains again:
        it cannot know how long ago the first drain began, and a second wait only
        delays a stop, never loses a request."""
        uid = task.metadata.uid
        if uid in self.leaving or not nw.task_attachments(task):
            return
        self.leaving.add(uid)
        await self.sync("detach", covering=self._ask())
        was_backend = ts.is_running(task)
        self.log.info("task left the balancer", key=_ref(task),
                      drain=self.drain if was_backend else 0)
        if was_backend and self.drain > 0:
            await asyncio.sleep(self.drain)


def _ref(task: resource.Resource) -> str:
    return f"task/{ts.task_key(task)}"
