"""Rebalancing decisions (``controllers/updater/rebalance.py``): a node joins a service
spread 3/3 and gets its share, at the pace asked for, only from a steady state, never
against maxReplicasPerNode or a spread preference; and, as properties over arbitrary
spreads, a move never goes from a node with fewer tasks to one with more, repeated
decisions even any spread out to maxSkew, and a balanced service is left alone."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.controllers import nodefacts
from shoal.controllers.scheduler import schedule
from shoal.controllers.updater import rebalance as rb
from shoal.crds import resource
from tests.unit import scheduler_support as sched
from tests.unit.orchestrator_support import NOW, node

ON = rb.Config(enabled=True)


def spread(*counts: int) -> tuple[list[rb.Slot], list[rb.Candidate]]:
    """Slots spread over nodes n1, n2, ... with ``counts`` tasks each, all running."""
    slots, key = [], 0
    for i, count in enumerate(counts, start=1):
        for _ in range(count):
            key += 1
            slots.append(rb.Slot(key, f"n{i}", True))
    return slots, [rb.Candidate(f"n{i}") for i in range(1, len(counts) + 1)]


def per_node(slots: Sequence[rb.Slot]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in slots:
        if s.node is not None:
            out[s.node] = out.get(s.node, 0) + 1
    return out


def apply(slots: list[rb.Slot], moves: Sequence[rb.Move]) -> list[rb.Slot]:
    """The moves carried out: each slot's task now runs on the scheduler's pick."""
    moved = {m.slot: m.target for m in moves}
    return [rb.Slot(s.key, moved.get(s.key, s.node), True) for s in slots]


def test_a_joining_node_gets_its_share_one_move_at_a_time_within_the_pace() -> None:
    slots, nodes = spread(3, 3, 0)
    first = rb.decide(slots, 6, nodes, NOW, ON)
    # Six moves a minute allowed, but two are enough: 3/3/0 -> 2/2/2.
    assert [(m.source, m.target) for m in first.moves] == [("n1", "n3"), ("n2", "n3")]
    assert {m.slot for m in first.moves} == {3, 6}  # the highest slot of each node
    done = apply(slots, first.moves)
    assert per_node(done) == {"n1": 2, "n2": 2, "n3": 2}
    assert rb.decide(done, 6, nodes, NOW, ON) == rb.Decision((), balanced=True)


def test_the_pace_is_a_rolling_minute_of_moves() -> None:
    slots, nodes = spread(6, 0, 0)
    paced = rb.Config(enabled=True, max_moves_per_minute=1)
    one = rb.decide(slots, 6, nodes, NOW, paced)
    assert len(one.moves) == 1
    held = rb.decide(apply(slots, one.moves), 6, nodes, NOW + 10, paced, recent=[NOW])
    assert held.moves == () and not held.balanced
    assert held.waiting == "1 moves in the last minute (maxMovesPerMinute 1)"
    assert held.requeue_after == 50.0 and not held.settled
    later = rb.decide(apply(slots, one.moves), 6, nodes, NOW + 61, paced, recent=[NOW])
    assert len(later.moves) == 1


def test_no_move_unless_every_task_runs() -> None:
    slots, nodes = spread(3, 3, 0)
    starting = [*slots[:-1], rb.Slot(6, "n2", False)]
    held = rb.decide(starting, 6, nodes, NOW, ON)
    assert held.moves == () and not held.steady and not held.settled
    assert rb.decide(slots[:-1], 6, nodes, NOW, ON).moves == ()  # a slot is missing
    unplaced = [*slots[:-1], rb.Slot(6, None, True)]
    assert rb.decide(unplaced, 6, nodes, NOW, ON).waiting == (
        "waiting for every task of the service to run")


def test_within_max_skew_nothing_moves() -> None:
    slots, nodes = spread(3, 1, 1)
    loose = rb.Config(enabled=True, max_skew=2)
    assert rb.decide(slots, 5, nodes, NOW, loose).balanced
    assert len(rb.decide(slots, 5, nodes, NOW, ON).moves) == 1


def test_max_replicas_per_node_is_respected() -> None:
    slots, nodes = spread(2, 2, 0, 0)
    decision = rb.decide(slots, 4, nodes, NOW, ON, limit=1)
    # n3 and n4 each take one; nothing is predicted onto a node at the limit.
    assert sorted(m.target for m in decision.moves) == ["n3", "n4"]
    assert per_node(apply(slots, decision.moves)) == {"n1": 1, "n2": 1, "n3": 1, "n4": 1}


def test_spread_preferences_decide_where_a_task_may_go() -> None:
    # Zone a has n1 (3 tasks) and n2 (0); zone b has n3 (3). The zones are even, so the
    # scheduler would put a replacement in either: moving n1's task could land on n3 and
    # make zone b heavier. No move.
    slots, _ = spread(3, 0, 3)
    zones = [rb.Candidate("n1", ("a",)), rb.Candidate("n2", ("a",)),
             rb.Candidate("n3", ("b",))]
    stuck = rb.decide(slots, 6, zones, NOW, ON)
    assert stuck.moves == () and not stuck.balanced and stuck.settled
    # The scheduler settles such ties by the service's turn (nodefacts.spread_turn):
    # even turns take zone a first, odd ones zone b.
    assert [(m.source, m.target) for m in rb.decide(slots, 6, zones, NOW, ON,
                                                    turn=0).moves] == [("n1", "n2")]
    assert rb.decide(slots, 6, zones, NOW, ON, turn=1).moves == ()
    # Zone a 4 (n1 4, n2 0), zone b 2 (n3): the scheduler puts the replacement in zone b;
    # only a task from zone a helps, and n1 is the most loaded there.
    slots, _ = spread(4, 0, 2)
    decision = rb.decide(slots, 6, zones, NOW, ON)
    assert [(m.source, m.target) for m in decision.moves[:1]] == [("n1", "n3")]


def test_candidates_are_ready_active_matching_nodes() -> None:
    nodes = [node("a", labels={"zone": "x"}), node("b", labels={"zone": "y"}),
             node("c", state="down", labels={"zone": "x"}),
             node("d", availability="pause", labels={"zone": "x"}),
             node("e", availability="drain", labels={"zone": "x"})]
    got, problems = rb.candidates({"constraints": ["node.labels.zone==x"]}, nodes)
    assert [c.name for c in got] == ["a"] and problems == []
    got, _ = rb.candidates({"preferences": [{"spread": "node.labels.zone"}]}, nodes)
    assert [(c.name, c.groups) for c in got] == [("a", ("x",)), ("b", ("y",))]
    none, problems = rb.candidates({"constraints": ["node.role==boss"]}, nodes)
    assert none == [] and "node.role is manager or worker" in problems[0]


def test_config_from_spec_keeps_defaults_for_unreadable_fields() -> None:
    config, problems = rb.Config.from_spec(
        {"rebalance": {"enabled": True, "maxSkew": 0, "maxMovesPerMinute": "lots"}})
    assert config == rb.Config(enabled=True)
    assert problems == [
        "spec.placement.rebalance.maxSkew 0: must be an integer >= 1; using the default",
        "spec.placement.rebalance.maxMovesPerMinute 'lots': must be an integer >= 1; "
        "using the default"]
    assert rb.Config.from_spec(None) == (rb.Config(), [])


def test_recent_moves_are_the_marked_replacements_of_the_last_minute() -> None:
    def made(name: str, ago: float, moved: bool) -> resource.Resource:
        task = resource.new("Task", name, "default")
        task.metadata.creationTimestamp = str(NOW - ago)
        if moved:
            task.metadata.annotations[rb.MOVED_FROM] = "n1"
        return task
    tasks = [made("web.1.2", 10, True), made("web.2.2", 70, True), made("web.3.2", 5, False)]
    assert rb.recent_moves(tasks, NOW) == [NOW - 10]


# --- properties ---------------------------------------------------------------------------

counts_st = st.lists(st.integers(min_value=0, max_value=8), min_size=2, max_size=6)
skew_st = st.integers(min_value=1, max_value=3)
pace_st = st.integers(min_value=1, max_value=8)


@settings(max_examples=300, deadline=None)
@given(counts_st, skew_st, pace_st)
def test_a_move_never_goes_from_fewer_tasks_to_more(counts: list[int], skew: int,
                                                    pace: int) -> None:
    slots, nodes = spread(*counts)
    decision = rb.decide(slots, len(slots), nodes, NOW,
                         rb.Config(True, skew, pace))
    after = per_node(slots)
    for move in decision.moves:
        assert after.get(move.source, 0) > after.get(move.target, 0) + 1
        after[move.source] -= 1
        after[move.target] = after.get(move.target, 0) + 1
    assert len(decision.moves) <= pace


@settings(max_examples=300, deadline=None)
@given(counts_st, skew_st, pace_st)
def test_repeated_decisions_even_the_spread_out(counts: list[int], skew: int,
                                                pace: int) -> None:
    slots, nodes = spread(*counts)
    config = rb.Config(True, skew, pace)
    now = NOW
    for _ in range(sum(counts) + 1):
        decision = rb.decide(slots, len(slots), nodes, now, config)
        if not decision.moves:
            break
        slots = apply(slots, decision.moves)
        now += rb.WINDOW  # a fresh minute: the pace only spreads the moves out
    final = [per_node(slots).get(c.name, 0) for c in nodes]
    assert max(final) - min(final) <= skew
    assert rb.decide(slots, len(slots), nodes, now, config).balanced


@settings(max_examples=300, deadline=None)
@given(counts_st, skew_st)
def test_no_move_when_balanced(counts: list[int], skew: int) -> None:
    slots, nodes = spread(*counts)
    decision = rb.decide(slots, len(slots), nodes, NOW, rb.Config(True, skew))
    if max(counts) - min(counts) <= skew:
        assert decision.moves == () and decision.balanced
    else:
        assert decision.moves and not decision.balanced


zoned_st = st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]),
                              st.integers(min_value=0, max_value=6)), min_size=2, max_size=6)


def potential(slots: Sequence[rb.Slot], nodes: Sequence[rb.Candidate]) -> tuple[int, int]:
    """Zone-level, then node-level sum of squared counts: every good move lowers it."""
    counts = per_node(slots)
    zones: dict[str | None, list[int]] = {}
    for c in nodes:
        zones.setdefault(c.groups[0], []).append(counts.get(c.name, 0))
    return (sum(sum(v) ** 2 for v in zones.values()),
            sum(n * n for v in zones.values() for n in v))


@settings(max_examples=300, deadline=None)
@given(zoned_st, skew_st, st.one_of(st.none(), st.integers(min_value=0, max_value=5)))
def test_with_spread_preferences_every_move_helps_and_moves_stop(
        zoned: list[tuple[str | None, int]], skew: int, turn: int | None) -> None:
    slots, plain = spread(*(count for _, count in zoned))
    nodes = [rb.Candidate(c.name, (zone,)) for c, (zone, _) in zip(plain, zoned, strict=True)]
    config = rb.Config(True, skew, 100)
    now, rounds = NOW, 0
    while True:
        decision = rb.decide(slots, len(slots), nodes, now, config, turn=turn)
        if not decision.moves:
            break
        for move in decision.moves:
            before = potential(slots, nodes)
            slots = apply(slots, [move])
            assert potential(slots, nodes) < before
        rounds += 1
        assert rounds <= 200
        now += rb.WINDOW


@settings(max_examples=200, deadline=None)
@given(zoned_st, st.integers(min_value=0, max_value=2))
def test_the_predicted_target_is_where_the_scheduler_puts_the_replacement(
        zoned: list[tuple[str | None, int]], limit: int) -> None:
    slots, plain = spread(*(count for _, count in zoned))
    nodes = [rb.Candidate(c.name, (zone,)) for c, (zone, _) in zip(plain, zoned, strict=True)]
    svc = sched.service("web", len(slots), spread=["node.labels.zone"], max_per_node=limit)
    turn = nodefacts.spread_turn("default", "web")
    decision = rb.decide(slots, len(slots), nodes, NOW, ON, limit=limit, turn=turn)
    if not decision.moves:
        return
    move = decision.moves[0]
    cluster = [sched.node(c.name, labels={} if zone is None else {"zone": zone})
               for c, (zone, _) in zip(plain, zoned, strict=True)]
    running = [sched.task(svc, s.key, node_name=s.node, state="running") for s in slots]
    result = schedule([sched.task(svc, move.slot, seq=2)], cluster, running, [svc])
    assert result.assignments == {f"default/web.{move.slot}.2": move.target}
