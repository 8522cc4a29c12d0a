"""Rebalancing: which running tasks of a service to move so its spread evens out.

Swarm never moves a running task: a node that joins or comes back stays empty until
something else restarts tasks. Shoal does, for services that ask
(``spec.placement.rebalance``) or once on demand (``swctl service rebalance``). This
module is the decision alone — pure, no I/O, the time an argument; the updater feeds it
from its caches and carries the moves out as start-first replacements of clean tasks.

How a move works, and so what this module must predict: the updater creates a pending
replacement in the slot and the old task keeps running; the scheduler places the
replacement on the least loaded eligible node *counting the old task where it is*
(fewest tasks of the service, down the spread tree when there are spread preferences);
once the replacement runs the old task is stopped. So the decision never names a target
for the scheduler — it picks which slot to give up, and checks that wherever the
scheduler may put the replacement (``_targets``: its choices, ties included), the move
makes the spread strictly better. That is what keeps moves from going back and forth.

The rules:

* only from a steady state: every live slot's task runs, none is in flight, the slots
  are all there; a move in progress therefore blocks the next one, and so do an update,
  a restart, a node loss;
* counted over the candidate nodes (ready, active, matching the constraints and
  platforms); tasks on other nodes (a paused node keeps its tasks) are left where they
  are and not counted, as the scheduler does not count them when spreading;
* balanced: on every level of the spread tree (no preferences: just the nodes) sibling
  counts differ by at most ``maxSkew``. A move from S to T is taken only when, on the
  level where their branches part, S's branch holds more than ``maxSkew`` tasks more
  than T's — so no level's imbalance grows, every move strictly lowers a measure that
  cannot fall forever, and moves stop. Without preferences a move never goes from a
  node with fewer tasks to one with more, and moves stop at max - min <= maxSkew. With
  preferences the scheduler sends the replacement to the group with the fewest tasks
  (the old task still counted there), equal groups in its rotated order
  (``nodefacts.spread_turn``, shared so the prediction is the scheduler's own rule);
  when that group is not one a move would help, nothing moves, so a skew inside a group
  can stay while the groups are even (docs/updater.md says so);
* ``maxReplicasPerNode``: a node at the limit takes nothing (the scheduler's rule);
* pace: at most ``maxMovesPerMinute`` moves in any rolling minute, counted from the
  replacements' creation times (``MOVED_FROM`` marks them); several moves go in one pass
  only while the budget lasts and the scheduler's picks are unambiguous.

What is not predicted: reservations and host ports (a node short of memory is a
candidate here but not for the scheduler). A replacement the scheduler cannot place
stays pending, which the updater sees as a move that did not land.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from shoal.controllers import nodefacts
from shoal.crds import constraints as cons
from shoal.crds import taskstates as ts
from shoal.crds import updatemeta
from shoal.crds.resource import Resource

#: On a replacement made by a move: the node the task moved from.
MOVED_FROM: Final = "shoal.io/moved-from"
#: On the Service: one rebalance on demand (an RFC 3339 time, written by swctl).
REQUEST: Final = updatemeta.REBALANCE_REQUEST
#: The pace is counted over this many seconds.
WINDOW: Final = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """``spec.placement.rebalance`` with its defaults."""

    enabled: bool = False
    max_skew: int = 1
    max_moves_per_minute: int = 6

    @classmethod
    def from_spec(cls, placement: Any) -> tuple[Config, list[str]]:
        """Read leniently: an unreadable field keeps its default and is named in the
        problems (admission refuses such a spec; this guards what reached etcd another
        way, which must not crash the loop)."""
        section = placement.get("rebalance") if isinstance(placement, dict) else None
        spec = section if isinstance(section, dict) else {}
        problems: list[str] = []
        fields: dict[str, Any] = {}
        enabled = spec.get("enabled")
        if enabled is not None:
            if isinstance(enabled, bool):
                fields["enabled"] = enabled
            else:
                problems.append(f"spec.placement.rebalance.enabled {enabled!r}: must be true "
                                "or false; rebalancing stays off")
        for name, attr in (("maxSkew", "max_skew"),
                           ("maxMovesPerMinute", "max_moves_per_minute")):
            value = spec.get(name)
            if value is None:
                continue
            if type(value) is int and value >= 1:
                fields[attr] = value
            else:
                problems.append(f"spec.placement.rebalance.{name} {value!r}: must be an "
                                "integer >= 1; using the default")
        return cls(**fields), problems


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    """One live slot: its number, the node of its task (None: not placed yet), and
    whether that task runs with nothing else in flight in the slot (no replacement
    pending, no start-first overlap)."""

    key: int
    node: str | None
    running: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A node that may run the service, and its spread group values (outermost first;
    None: the node lacks the label, which is a group of its own, as in Swarm)."""

    name: str
    groups: tuple[str | None, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    """Give up ``slot``'s task on ``source``; the scheduler is expected to put the
    replacement on ``target`` (or a node as good: ties are the scheduler's)."""

    slot: int
    source: str
    target: str


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Moves to start now. ``balanced``: within maxSkew. ``waiting``: why an uneven
    service gets no move now (empty when moving or balanced). ``requeue_after``: when
    the pace allows the next move. ``steady``: every slot's one task runs."""

    moves: tuple[Move, ...]
    balanced: bool
    waiting: str = ""
    requeue_after: float | None = None
    steady: bool = True

    @property
    def settled(self) -> bool:
        """Nothing more to do: steady, and balanced or without a move that would help
        (not merely held back by the pace). A rebalance request is done then."""
        return self.steady and not self.moves and self.requeue_after is None


def candidates(placement: Any, nodes: Iterable[Resource]) -> tuple[list[Candidate], list[str]]:
    """The nodes a task of a service with this ``spec.placement`` may be placed on now:
    ready, active, matching the constraints and platforms. With a constraint or spread
    preference that cannot be read there are none (and the problem is returned): no
    move is better than a move the scheduler would refuse."""
    spec = placement if isinstance(placement, dict) else {}
    try:
        constraints = cons.parse_constraints(spec.get("constraints"))
        spread = [cons.parse_spread(str(p["spread"])) for p in spec.get("preferences") or ()
                  if isinstance(p, dict) and p.get("spread") is not None]
    except cons.ConstraintError as exc:
        return [], [str(exc)]
    platforms = nodefacts.platforms_of(spec)
    out: list[Candidate] = []
    for node in nodes:
        if (node.status.get("state") != "ready"
                or (node.spec.get("availability") or "active") != "active"):
            continue
        try:
            facts = nodefacts.NodeFacts.of(node)
        except Exception:  # an unreadable node is not placed on (nodefacts.readable_nodes)
            continue
        if nodefacts.match_all(constraints, facts) and nodefacts.matches_platforms(
                platforms, facts):
            out.append(Candidate(node.metadata.name,
                                 tuple(nodefacts.spread_value(facts, d) for d in spread)))
    return sorted(out, key=lambda c: c.name), []


def max_per_node(placement: Any) -> int:
    """``placement.maxReplicasPerNode`` (0: no limit; unreadable: no limit)."""
    value = placement.get("maxReplicasPerNode") if isinstance(placement, dict) else None
    return value if type(value) is int and value > 0 else 0


def recent_moves(tasks: Iterable[Resource], now: float) -> list[float]:
    """Creation times of the move replacements made in the last ``WINDOW`` seconds."""
    out = []
    for task in tasks:
        if MOVED_FROM in task.metadata.annotations:
            made = ts.creation_time(task)
            if now - made < WINDOW:
                out.append(made)
    return sorted(out)


# --- the spread tree ---------------------------------------------------------------------
#
# A node's path is its group values then its name; a tree node is a path prefix. The
# shape is fixed per decision (built once); counts are summed over prefixes in one pass
# over the nodes whenever they are needed, so a decision over 1,000 nodes stays linear.

Path = tuple[str | None, ...]


def _sort_key(path: Path) -> tuple[tuple[bool, str], ...]:
    return tuple((v is None, v or "") for v in path)


class _Tree:
    def __init__(self, nodes: Sequence[Candidate]) -> None:
        self.paths: dict[str, Path] = {c.name: (*c.groups, c.name) for c in nodes}
        self.depth = max((len(p) for p in self.paths.values()), default=1)
        kids: dict[Path, set[Path]] = {}
        for path in self.paths.values():
            for d in range(len(path)):
                kids.setdefault(path[:d], set()).add(path[:d + 1])
        # Every inner tree node's branches, in the scheduler's order (label values
        # sorted, "no label" last).
        self.children: dict[Path, list[Path]] = {
            prefix: sorted(branches, key=_sort_key) for prefix, branches in kids.items()}

    def totals(self, counts: Mapping[str, int], among: Iterable[str] | None = None
               ) -> dict[Path, int]:
        """Tasks under every tree node (of the nodes ``among``, if given: then only the
        tree nodes holding one of them appear)."""
        out: dict[Path, int] = {}
        for name in (self.paths if among is None else among):
            path, count = self.paths[name], counts.get(name, 0)
            for d in range(len(path) + 1):
                out[path[:d]] = out.get(path[:d], 0) + count
        return out

    def skew(self, counts: Mapping[str, int]) -> int:
        """The largest difference between sibling counts anywhere in the tree."""
        totals = self.totals(counts)
        worst = 0
        for branches in self.children.values():
            if len(branches) > 1:
                values = [totals[b] for b in branches]
                worst = max(worst, max(values) - min(values))
        return worst

    def parting(self, a: str, b: str) -> tuple[Path, Path]:
        """The branches of ``a`` and ``b`` where their paths part."""
        pa, pb = self.paths[a], self.paths[b]
        d = 0
        while pa[d] == pb[d]:
            d += 1
        return pa[:d + 1], pb[:d + 1]


def _targets(tree: _Tree, counts: Mapping[str, int], limit: int,
             turn: int | None) -> list[str]:
    """Every node the scheduler may put one more task on, given ``counts`` (the old
    tasks still counted): down the spread group with the fewest tasks, equal groups
    taken in the scheduler's rotated order (``nodefacts.spread_turn``; ``turn`` None:
    all of them followed), then any node of that group with the fewest (the scheduler
    breaks those ties by tasks overall, which does not change the spread). Nodes at
    ``limit`` (maxReplicasPerNode) take nothing."""
    totals = tree.totals(counts)
    # Branches with room: those holding a node below the limit.
    room = tree.totals({}, [n for n in tree.paths if not limit or counts.get(n, 0) < limit])
    out: list[str] = []

    def walk(prefix: Path) -> None:
        siblings = tree.children.get(prefix, [])
        scored = [(totals[b], b) for b in siblings if b in room]
        if not scored:
            return
        fewest = min(score for score, _ in scored)
        tied = [b for score, b in scored if score == fewest]
        if len(tied[0]) == tree.depth:  # nodes (every path has the same length)
            out.extend(str(b[-1]) for b in tied)
            return
        if turn is not None:
            tied = [min(tied, key=lambda b: (siblings.index(b) + turn) % len(siblings))]
        for branch in tied:
            walk(branch)

    walk(())
    return sorted(out)


def decide(slots: Sequence[Slot], replicas: int, nodes: Sequence[Candidate], now: float,
           config: Config = Config(), recent: Sequence[float] = (),
           limit: int = 0, turn: int | None = None) -> Decision:
    """Which slots to move now (see the module docstring for the rules).

    ``slots``: the service's live slots. ``replicas``: how many it should have.
    ``nodes``: the candidates (``candidates``). ``recent``: creation times of the moves
    of the last minute (``recent_moves``). ``limit``: maxReplicasPerNode (0: none).
    ``turn``: the service's ``nodefacts.spread_turn``, which settles the scheduler's
    choice between equally loaded spread groups (None: either may be chosen).
    """
    tree = _Tree(nodes)
    counts: dict[str, int] = {}
    movable: dict[str, list[int]] = {}
    for slot in slots:
        if slot.node in tree.paths:
            counts[slot.node] = counts.get(slot.node, 0) + 1
            movable.setdefault(slot.node, []).append(slot.key)
    steady = len(slots) == replicas and all(s.running and s.node for s in slots)
    if len(tree.paths) < 2 or tree.skew(counts) <= config.max_skew:
        return Decision((), balanced=True, steady=steady)
    if not steady:
        return Decision((), False, "waiting for every task of the service to run",
                        steady=False)
    window = [t for t in recent if now - t < WINDOW]
    budget = config.max_moves_per_minute - len(window)
    if budget <= 0:
        wait = max(min(window) + WINDOW - now, 0.0) if window else WINDOW
        return Decision((), False, f"{len(window)} moves in the last minute "
                        f"(maxMovesPerMinute {config.max_moves_per_minute})", wait)
    for keys in movable.values():
        keys.sort()
    scheduled = dict(counts)  # as the scheduler counts: old tasks stay until replaced
    after = dict(counts)  # once the replacements run and the old tasks have stopped
    moves: list[Move] = []
    while len(moves) < budget and tree.skew(after) > config.max_skew:
        picks = _targets(tree, scheduled, limit, turn)
        source = _source(tree, after, movable, picks, config.max_skew)
        if source is None:
            break
        target = picks[0]
        moves.append(Move(movable[source].pop(), source, target))
        scheduled[target] = scheduled.get(target, 0) + 1
        after[source] -= 1
        after[target] = after.get(target, 0) + 1
        if len({tree.paths[p][:-1] for p in picks}) > 1:
            break  # which group the scheduler picks decides what comes next
    if not moves:
        return Decision((), False, "no move the scheduler would make evens the spread "
                        "out further")
    return Decision(tuple(moves), False)


def _source(tree: _Tree, after: Mapping[str, int], movable: Mapping[str, list[int]],
            picks: Sequence[str], max_skew: int) -> str | None:
    """The most loaded node whose task may move to any of ``picks`` and improve things:
    where their branches part, the source's holds more than ``max_skew`` tasks more."""
    if not picks:
        return None
    totals = tree.totals(after)
    order = sorted((n for n, keys in movable.items() if keys),
                   key=lambda n: (-after.get(n, 0), n))
    for source in order:
        if all(pick != source and _better(tree, totals, source, pick, max_skew)
               for pick in picks):
            return source
    return None


def _better(tree: _Tree, totals: Mapping[Path, int], source: str, target: str,
            max_skew: int) -> bool:
    mine, theirs = tree.parting(source, target)
    return totals.get(mine, 0) - totals.get(theirs, 0) > max_skew
