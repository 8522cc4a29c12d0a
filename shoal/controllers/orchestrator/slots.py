"""Slots: how many tasks a service should have, and which to create, stop and forget.

A replicated service owns numbered slots; each slot holds one current task plus its
history. A global service has one "slot" per node, keyed by node name. Given a service and
all of its tasks (and, for global services or node-aware replacement, the nodes), the
functions here return a ``Plan`` — tasks to create, tasks to shut down, history to delete,
and when to look again — and perform no I/O. The orchestrator loop applies a plan in one
etcd transaction (or chunks that keep each slot's shutdown and create together): a
slot's replacement never exists without its predecessor being told to stop, and the
reverse.

Swarm's rules, level-triggered:

* scale-up fills the lowest free slot numbers; scale-down removes slots from the nodes
  that run the most replicas of the service first, preferring tasks not yet running, then
  the highest slot;
* a task whose node is down, drained or gone is replaced at once in the same slot,
  without delay and without counting against the restart policy (it did nothing wrong);
* a task that ended by itself goes through the restart policy (``restart.py``); a slot
  the policy gave up on stays occupied — and is not refilled — until the service changes;
* history: ``taskHistoryLimit`` old tasks kept per slot (per node), newest first; older
  ones are deleted once the agent is done with them; slots that no longer exist lose all
  history once it is safe;
* global: one task per node that is ready, not drained and matches the constraints; a
  paused node keeps its task but gets no new one; down, drained and non-matching nodes
  have theirs shut down.

Names of new tasks are deterministic (``<service>.<slot>.<n>`` or ``<service>.<node>.<n>``,
``n`` one past the slot's newest), so two orchestrators that act on the same view — an old
leader not yet fenced and its successor, or one pass racing its own stale cache — try to
create the *same* task, and etcd's create-if-absent lets only one through. That is what
keeps a slot from ever holding two desired-running tasks — with one exception: a
start-first update (the updater controller) creates a slot's replacement while the old
task still runs, and ``_view`` stops the old one once the replacement runs. The overlap is
across generations (the old task is dirty, the new one is not), or within one when the
old task is marked ``shoal.io/replaced-by`` the new one (a rebalancing move of a clean
task); any other two tasks of one generation in a slot are duplicates, and the one
furthest along is kept. Whether a
task runs an out-of-date spec is not looked at here: a dirty task that runs is the
updater's to replace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Final

from shoal.controllers import nodefacts, taskspec
from shoal.controllers.orchestrator import restart as rs
from shoal.crds import constraints as cons
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

DEFAULT_HISTORY_LIMIT: Final = 5
REPLICATED: Final = "replicated"
GLOBAL: Final = "global"


@dataclasses.dataclass(frozen=True, slots=True)
class Create:
    """A task to create: slot ``slot`` (replicated) or pinned to ``node_name`` (global,
    slot 0). ``annotations`` carry the slot's restart history onto the new task."""

    name: str
    slot: int
    node_name: str | None
    reason: str
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown:
    """Set ``task``'s desired state to shutdown, merging ``annotations`` into its own."""

    task: Resource
    reason: str
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class Plan:
    """Everything one reconcile pass of one service wants changed."""

    creates: list[Create] = dataclasses.field(default_factory=list)
    shutdowns: list[Shutdown] = dataclasses.field(default_factory=list)
    deletes: list[Resource] = dataclasses.field(default_factory=list)
    #: Reconcile again after this many seconds (a restart delay is running), else None.
    requeue_after: float | None = None
    #: Spec problems that stopped part of the plan (bad constraint, restart policy ...).
    problems: list[str] = dataclasses.field(default_factory=list)
    #: Some slot keeps a start-first overlap (an older task desired running beside a
    #: newer one not yet running): the newer one's running report ends it.
    overlaps: bool = False

    @property
    def empty(self) -> bool:
        return not (self.creates or self.shutdowns or self.deletes)

    def requeue(self, delay: float) -> None:
        self.requeue_after = delay if self.requeue_after is None else min(self.requeue_after,
                                                                          delay)


@dataclasses.dataclass(slots=True)
class _Slot:
    """One slot (or global node) during a pass: what it holds and what happens to it."""

    key: int | str  # slot number, or node name for global services
    tasks: list[Resource]  # oldest first
    current: Resource | None = None  # the task that stays the slot's current one
    # Older-generation tasks still desired running, left alone: a start-first update in
    # flight belongs to the updater.
    others: list[Resource] = dataclasses.field(default_factory=list)
    replace: tuple[str, dict[str, str]] | None = None  # (reason, annotations) to create
    stopping: list[Shutdown] = dataclasses.field(default_factory=list)
    finished: bool = False  # the restart policy gave up on it in this generation

    @property
    def live(self) -> bool:
        """Holds, or is about to hold, a task desired running."""
        return self.current is not None or self.replace is not None

    def next_name(self, service: str) -> str:
        return taskspec.next_name(service, self.key, self.tasks)


def _best(tasks: Sequence[Resource]) -> Resource:
    """Of several tasks desired running in one slot and generation, the one to keep: not
    ended, furthest along, newest."""
    return max(tasks, key=lambda t: (not ts.has_ended(t), ts.RANK[ts.observed_state(t)],
                                     taskspec.age_key(t)))


def _node_problem(task: Resource, nodes: dict[str, Resource] | None) -> str | None:
    """Why the task's node can no longer run it (down, drained, gone), or None."""
    name = ts.node_name_of(task)
    if nodes is None or name is None:
        return None
    node = nodes.get(name)
    if node is None:
        return f"node {name} is gone"
    if node.status.get("state") != "ready":
        return f"node {name} is {node.status.get('state') or 'not ready'}"
    if node.spec.get("availability") == "drain":
        return f"node {name} is drained"
    return None


def _view(key: int | str, tasks: Iterable[Resource], generation: int,
          policy: rs.RestartPolicy, now: float, plan: Plan,
          nodes: dict[str, Resource] | None) -> _Slot:
    """Sort out one slot: duplicates, node loss, restart policy."""
    tasks = list(tasks)
    if len(tasks) == 1:
        # The common case, kept cheap (services are re-planned whenever a node changes):
        # one task, still wanted, not ended, on a usable node — it simply stays current.
        only = tasks[0]
        if (ts.is_active_desired(only) and not ts.has_ended(only)
                and _node_problem(only, nodes) is None):
            return _Slot(key=key, tasks=tasks, current=only)
    slot = _Slot(key=key, tasks=sorted(tasks, key=taskspec.age_key))
    active = [t for t in slot.tasks if ts.is_active_desired(t)]
    if not active:
        newest = slot.tasks[-1] if slot.tasks else None
        slot.finished = (newest is not None and rs.NO_RESTART in newest.metadata.annotations
                         and ts.generation_of(newest) == generation)
        return slot
    # A task the updater marked as replaced by another task of the slot is the older
    # half of a start-first overlap, even in the same generation (a rebalancing move
    # replaces a clean task): not a duplicate, and it stops once its replacement runs.
    names = {t.metadata.name for t in active}
    replaced = [t for t in active
                if t.metadata.annotations.get(taskspec.REPLACED_BY) in names]
    if replaced and len(replaced) < len(active):
        active = [t for t in active if t not in replaced]
    else:
        replaced = []
    by_generation: dict[int, list[Resource]] = {}
    for task in active:
        by_generation.setdefault(ts.generation_of(task), []).append(task)
    kept: list[Resource] = list(replaced)
    for _, same in sorted(by_generation.items()):
        best = _best(same)
        kept.append(best)
        # Two tasks of one generation in one slot only come from a crash or a stale cache;
        # keep the one furthest along.
        slot.stopping.extend(Shutdown(t, f"duplicate task for slot {key}")
                             for t in same if t is not best)
    current, slot.others = kept[-1], kept[:-1]
    if slot.others and ts.is_running(current):
        # A start-first update's overlap ends here: the replacement runs (and, with a
        # health check, is healthy: agents report running only then), so the older
        # tasks it replaces are told to stop.
        slot.stopping.extend(Shutdown(t, f"replaced by {current.metadata.name} (start-first)")
                             for t in slot.others)
        slot.others = []
    if slot.others:
        plan.overlaps = True

    problem = _node_problem(current, nodes)
    if problem is not None:
        slot.stopping.append(Shutdown(current, f"{problem}; task moved"))
        slot.replace = (f"replaces {current.metadata.name}: {problem}",
                        rs.replacement_annotations(current, policy, now, counted=False,
                                                   generation=generation))
        return slot
    decision = rs.decide(current, policy, now)
    if decision.action is rs.Action.NOW:
        slot.stopping.append(Shutdown(current, f"restarting: task {ts.observed_state(current)}"))
        slot.replace = (f"restarts {current.metadata.name} "
                        f"(task {ts.observed_state(current)})",
                        rs.replacement_annotations(current, policy, now,
                                                   generation=generation))
    elif decision.action is rs.Action.NEVER:
        slot.stopping.append(Shutdown(current, decision.reason,
                                      {rs.NO_RESTART: decision.reason}))
        slot.finished = ts.generation_of(current) == generation
    else:
        slot.current = current
        if decision.action is rs.Action.LATER:
            plan.requeue(decision.delay)
    return slot


def _read_policy(service: Resource, plan: Plan) -> rs.RestartPolicy:
    try:
        return rs.RestartPolicy.from_spec(service.spec.get("restartPolicy"))
    except ValueError as exc:
        # Keep the service running on Swarm's defaults rather than stopping restarts.
        plan.problems.append(str(exc))
        return rs.RestartPolicy()


def _history_limit(service: Resource) -> int:
    value = service.spec.get("taskHistoryLimit")
    try:
        return DEFAULT_HISTORY_LIMIT if value is None else int(value)
    except (TypeError, ValueError):
        return DEFAULT_HISTORY_LIMIT


def _deletable(task: Resource, nodes: dict[str, Resource] | None) -> bool:
    """Safe to forget: no longer wanted, and no agent will report on it again (it ended,
    it never reached a node, or its node is gone)."""
    if ts.is_active_desired(task):
        return False
    if ts.has_ended(task) or not ts.node_name_of(task):
        return True
    return nodes is not None and ts.node_name_of(task) not in nodes


def trim_history(slot_tasks: Sequence[Resource], limit: int,
                 nodes: dict[str, Resource] | None = None,
                 stopping: Iterable[Resource] = ()) -> list[Resource]:
    """Old tasks of one slot to delete: beyond the ``limit`` newest history entries, those
    that are safe to delete. History is every task not desired running, plus ``stopping``
    (tasks this pass shuts down — they count, but are not deleted in the same pass).
    A negative limit keeps everything."""
    if limit < 0 or limit >= len(slot_tasks):
        return []  # (the history is a subset of the slot's tasks: nothing can exceed)
    stopping_names = {t.metadata.name for t in stopping}
    history = sorted((t for t in slot_tasks
                      if not ts.is_active_desired(t) or t.metadata.name in stopping_names),
                     key=taskspec.age_key)
    excess = history[:max(len(history) - limit, 0)]
    return [t for t in excess if t.metadata.name not in stopping_names and _deletable(t, nodes)]


def lowest_free_slots(taken: Iterable[int], count: int) -> list[int]:
    """The ``count`` lowest slot numbers (from 1) not in ``taken``."""
    used = set(taken)
    out: list[int] = []
    slot = 0
    while len(out) < count:
        slot += 1
        if slot not in used:
            out.append(slot)
    return out


def scale_down_order(candidates: Iterable[tuple[int, str | None, bool]]) -> list[int]:
    """Slots in the order to remove them, from ``(slot, node or None, running)``.

    Each task is numbered as the n-th copy of the service on its node — running tasks and
    low slots first — so the surplus copies on the most loaded nodes carry the highest
    numbers and go first (Swarm's rule); tasks without a node go before all of them; equal
    numbers remove tasks not yet running first, then the highest slot.
    """
    per_node: dict[str, int] = {}
    ranked: list[tuple[float, bool, int]] = []
    for slot, node, running in sorted(candidates, key=lambda c: (not c[2], c[0])):
        if node is None:
            copy = float("inf")
        else:
            per_node[node] = per_node.get(node, 0) + 1
            copy = float(per_node[node])
        ranked.append((copy, running, slot))
    ranked.sort(key=lambda r: (-r[0], r[1], -r[2]))
    return [slot for _, _, slot in ranked]


def _emit(slot: _Slot, service: str, plan: Plan) -> None:
    """Apply a surviving slot's own decisions to the plan."""
    plan.shutdowns.extend(slot.stopping)
    if slot.replace is not None:
        reason, notes = slot.replace
        node = slot.key if isinstance(slot.key, str) else None
        plan.creates.append(Create(name=slot.next_name(service),
                                   slot=slot.key if isinstance(slot.key, int) else 0,
                                   node_name=node, reason=reason, annotations=notes))


@dataclasses.dataclass(frozen=True)
class NodeView:
    """The nodes as planning reads them: by name, and the names that may run tasks.

    Build it once for many plans (``NodeView.of``): a node going down re-plans a hundred
    services against the same thousand nodes."""

    index: dict[str, Resource]
    usable: frozenset[str]  # ready and not drained

    @classmethod
    def of(cls, nodes: Iterable[Resource] | NodeView) -> NodeView:
        if isinstance(nodes, NodeView):
            return nodes
        index = {n.metadata.name: n for n in nodes}
        return cls(index, frozenset(name for name, node in index.items()
                                    if node_usable(node)))


def node_usable(node: Resource) -> bool:
    """Ready and not drained: the node may keep running its tasks."""
    return node.status.get("state") == "ready" and node.spec.get("availability") != "drain"


def plan_replicated(service: Resource, tasks: Iterable[Resource], *, now: float,
                    nodes: Iterable[Resource] | None = None) -> Plan:
    """Reconcile a replicated service's slots with ``spec.replicas``.

    ``tasks``: every task of the service, history included. ``nodes``: when given, tasks
    on down, drained or vanished nodes are replaced in the same pass (otherwise the nodes
    controller's shutdowns get them replaced on the next one). ``now``: epoch seconds.
    """
    return plan_replicated_facts(service, [ts.facts_of(t) for t in tasks], now=now,
                                 nodes=nodes)


def plan_replicated_facts(service: Resource, facts: Iterable[ts.TaskFacts], *, now: float,
                          nodes: Iterable[Resource] | NodeView | None = None) -> Plan:
    """``plan_replicated`` from the tasks' facts, as the orchestrator's index keeps them."""
    plan = Plan()
    name = service.metadata.name
    generation = service.metadata.generation
    policy = _read_policy(service, plan)
    limit = _history_limit(service)
    view = None if nodes is None else NodeView.of(nodes)
    node_index = None if view is None else view.index
    try:
        replicas = max(int(service.spec.get("replicas", 1)), 0)
    except (TypeError, ValueError):
        plan.problems.append(f"invalid replicas {service.spec.get('replicas')!r}")
        return plan

    by_slot: dict[int, list[ts.TaskFacts]] = {}
    facts_list = facts if isinstance(facts, list) else list(facts)
    for fact in facts_list:
        if fact.slot <= 0:
            # Left over from another mode (global tasks have slot 0): not ours to keep.
            if fact.active:
                plan.shutdowns.append(Shutdown(fact.task,
                                               "task has no slot in a replicated service"))
            elif _deletable(fact.task, node_index):
                plan.deletes.append(fact.task)
            continue
        same = by_slot.get(fact.slot)
        if same is None:
            by_slot[fact.slot] = [fact]
        else:
            same.append(fact)

    # Settled slots — one task, wanted, not ended, on a usable node — need nothing, and
    # they are nearly all of them: a node going down re-plans every service with a task
    # there, 1,000 slots each, to replace one. They are told apart from the facts alone
    # (the same tests as ``_view``'s first branch) and only the rest get a ``_Slot``.
    usable = None if view is None else view.usable
    settled: dict[int, Resource] = {}
    slots: dict[int, _Slot] = {}
    for k in sorted(by_slot):
        same = by_slot[k]
        if len(same) == 1:
            only = same[0]
            if (only.active and not only.ended
                    and (usable is None or only.node is None or only.node in usable)):
                settled[k] = only.task
                continue
        slots[k] = _view(k, [f.task for f in same], generation, policy, now, plan, node_index)
    live_count = len(settled) + sum(1 for s in slots.values() if s.live)
    finished = [s for s in slots.values() if s.finished]
    wanted_live = max(replicas - len(finished), 0)
    if live_count > wanted_live and settled:
        # Scaling down weighs every slot: give the settled ones their full form.
        for k, task in settled.items():
            slots[k] = _Slot(key=k, tasks=[task], current=task)
        slots = dict(sorted(slots.items()))
        settled = {}
    live = [s for s in slots.values() if s.live]

    removed: set[int] = set()
    if len(live) > wanted_live:
        candidates = []
        for s in live:
            # A slot about to get a replacement has no node yet: Swarm removes those first.
            cur = s.current
            node = ts.node_name_of(cur) if cur is not None else None
            candidates.append((int(s.key), node, cur is not None and ts.is_running(cur)))
        removed = set(scale_down_order(candidates)[:len(live) - wanted_live])

    for s in slots.values():
        if s.key in removed:
            # Its replacement (if any) is never created; everything still wanted stops.
            _stop_slot(s, f"scaled down to {replicas} replicas", plan)
        else:
            _emit(s, name, plan)

    missing = replicas - len(live) - len(settled) - len(finished)
    if missing > 0:
        taken = [int(s.key) for s in live if s.key not in removed]
        taken += [int(s.key) for s in finished]
        taken += settled
        for slot_number in lowest_free_slots(taken, missing):
            old = slots.get(slot_number)
            if old is not None and old.tasks:
                # A slot emptied by someone else (the nodes controller stopping a task on a
                # lost node): its restart history carries on.
                notes = rs.replacement_annotations(old.tasks[-1], policy, now,
                                                   counted=False, generation=generation)
                fresh = _Slot(key=slot_number, tasks=old.tasks,
                              replace=(f"refills slot {slot_number} of {replicas}", notes))
            else:
                fresh = _Slot(key=slot_number, tasks=[],
                              replace=(f"slot {slot_number} of {replicas}", {}))
            _emit(fresh, name, plan)
            slots[slot_number] = fresh

    # History: live and finished slots keep ``limit`` old tasks; slots that are no longer
    # part of the service lose theirs as soon as that is safe.
    stopping_by_slot: dict[int, list[Resource]] = {}
    for shutdown in plan.shutdowns:
        stopping_by_slot.setdefault(ts.slot_of(shutdown.task), []).append(shutdown.task)
    for s in slots.values():
        keeps_slot = (s.live or s.finished) and s.key not in removed
        plan.deletes.extend(trim_history(s.tasks, limit if keeps_slot else 0, node_index,
                                         stopping_by_slot.get(int(s.key), ())))
    return plan


def _stop_slot(slot: _Slot, reason: str, plan: Plan) -> None:
    """Shut down everything in ``slot`` still desired running; create nothing."""
    plan.shutdowns.extend(slot.stopping)
    already = {sh.task.metadata.name for sh in slot.stopping}
    plan.shutdowns.extend(Shutdown(t, reason) for t in (slot.current, *slot.others)
                          if t is not None and t.metadata.name not in already)


def global_node_status(node: Resource, constraints: Sequence[cons.Constraint]
                       ) -> tuple[bool, bool, str]:
    """(may keep its task, may get a new one, why not) for one node of a global service."""
    name = node.metadata.name
    state = node.status.get("state")
    if state != "ready":
        return False, False, f"node {name} is {state or 'not ready'}"
    availability = node.spec.get("availability") or "active"
    if availability == "drain":
        return False, False, f"node {name} is drained"
    facts = nodefacts.NodeFacts.of(node)
    for constraint in constraints:
        if not nodefacts.matches(constraint, facts):
            return False, False, f"node {name} no longer matches {constraint}"
    if availability == "pause":
        return True, False, f"node {name} is paused"
    return True, True, ""


def plan_global(service: Resource, tasks: Iterable[Resource], nodes: Iterable[Resource], *,
                now: float) -> Plan:
    """Reconcile a global service: one task per eligible node (see module docstring)."""
    plan = Plan()
    tasks = list(tasks)
    name = service.metadata.name
    generation = service.metadata.generation
    policy = _read_policy(service, plan)
    limit = _history_limit(service)
    node_list = sorted(nodes, key=lambda n: n.metadata.name)
    node_index = {n.metadata.name: n for n in node_list}
    constraints: tuple[cons.Constraint, ...] | None
    try:
        placement = service.spec.get("placement") or {}
        constraints = cons.parse_constraints(placement.get("constraints"))
    except cons.ConstraintError as exc:
        # Do not act on a constraint we cannot read: stopping every task over a typo would
        # be worse than leaving the service as it is until the spec is fixed.
        plan.problems.append(str(exc))
        constraints = None

    by_node: dict[str, list[Resource]] = {}
    for task in tasks:
        node_name = ts.node_name_of(task)
        if node_name is None or ts.slot_of(task) > 0:
            if ts.is_active_desired(task):
                plan.shutdowns.append(Shutdown(task, "not a task of a global service"))
            elif _deletable(task, node_index):
                plan.deletes.append(task)
            continue
        by_node.setdefault(node_name, []).append(task)

    kept: list[_Slot] = []
    for node in node_list:
        node_name = node.metadata.name
        slot = _view(node_name, by_node.pop(node_name, []), generation, policy, now, plan,
                     None)
        if constraints is None:
            keep, grow, why = True, False, ""
        else:
            keep, grow, why = global_node_status(node, constraints)
        if not keep:
            shutdowns_before = len(plan.shutdowns)
            _stop_slot(slot, why, plan)
            stopping = [sh.task for sh in plan.shutdowns[shutdowns_before:]]
            plan.deletes.extend(trim_history(slot.tasks, limit, node_index, stopping))
            continue
        if not slot.live and not slot.finished and grow:
            notes = ({} if not slot.tasks else rs.replacement_annotations(
                slot.tasks[-1], policy, now, counted=False, generation=generation))
            slot.replace = (f"node {node_name} is eligible", notes)
        kept.append(slot)
    for slot in kept:
        shutdowns_before = len(plan.shutdowns)
        _emit(slot, name, plan)
        stopping = [sh.task for sh in plan.shutdowns[shutdowns_before:]]
        plan.deletes.extend(trim_history(slot.tasks, limit, node_index, stopping))

    # Tasks on nodes that no longer exist: stop what is still wanted, forget the rest.
    for node_name, gone in sorted(by_node.items()):
        for task in sorted(gone, key=taskspec.age_key):
            if ts.is_active_desired(task):
                plan.shutdowns.append(Shutdown(task, f"node {node_name} is gone"))
            else:
                plan.deletes.append(task)
    return plan


def plan_service(service: Resource, tasks: Iterable[Resource], nodes: Iterable[Resource], *,
                 now: float) -> Plan:
    """``plan_replicated`` or ``plan_global``, by ``spec.mode``."""
    return plan_service_facts(service, [ts.facts_of(t) for t in tasks], nodes, now=now)


def plan_service_facts(service: Resource, facts: Sequence[ts.TaskFacts],
                       nodes: Iterable[Resource] | NodeView, *, now: float) -> Plan:
    """``plan_service`` from the tasks' facts, as the orchestrator's index keeps them."""
    mode = service.spec.get("mode") or REPLICATED
    if mode == GLOBAL:
        node_list = nodes.index.values() if isinstance(nodes, NodeView) else nodes
        return plan_global(service, [f.task for f in facts], node_list, now=now)
    if mode != REPLICATED:
        plan = Plan()
        plan.problems.append(f'unknown mode "{mode}": expected replicated or global')
        return plan
    return plan_replicated_facts(service, facts, now=now, nodes=nodes)
