"""``swctl service rebalance``'s output (``cli/rebalance.py``): the moves it prints once
their replacements run, and the spread it reports over the eligible nodes."""

from __future__ import annotations

from shoal.cli import rebalance
from shoal.controllers.updater import rebalance as rb
from shoal.crds import resource
from tests.unit.orchestrator_support import NOW


def made(name: str, slot: int, node: str | None, *, state: str = "running",
         desired: str = "running", moved_from: str | None = None,
         at: float = NOW) -> resource.Resource:
    task = resource.new("Task", name, "default", labels={"shoal.io/service": "web"})
    task.metadata.creationTimestamp = str(at)
    task.spec = {"serviceName": "web", "slot": slot, "desiredState": desired}
    if node is not None:
        task.spec["nodeName"] = node
    task.status = {"state": state}
    if moved_from is not None:
        task.metadata.annotations[rb.MOVED_FROM] = moved_from
    return task


def test_moves_are_printed_once_their_replacement_runs() -> None:
    tasks = [made("web.3.1", 3, "n1", desired="shutdown"),
             made("web.3.2", 3, "n3", moved_from="n1", at=NOW + 2),
             made("web.6.2", 6, "n3", moved_from="n2", state="starting", at=NOW + 3),
             made("web.5.2", 5, "n3", moved_from="n2", at=NOW - 100),  # an earlier request
             made("web.1.2", 1, "n1", at=NOW + 1)]  # a restart, not a move
    assert rebalance.moves_since(tasks, "web", NOW) == [
        ("web.3.2", "moved web.3 from n1 to n3")]


def test_the_spread_counts_running_tasks_on_every_eligible_node() -> None:
    tasks = [made("web.1.1", 1, "n1"), made("web.2.1", 2, "n1"),
             made("web.3.1", 3, "n1", desired="shutdown"),  # a moved task stopping
             made("web.3.2", 3, "n2"), made("web.4.1", 4, "n2", state="starting"),
             made("web.5.1", 5, "paused-node")]
    counts = rebalance.spread(tasks, ["n1", "n2", "n3"])
    assert counts == {"n1": 2, "n2": 1, "n3": 0, "paused-node": 1}
    assert rebalance.spread_text(counts) == "n1 2, n2 1, n3 0, paused-node 1"


def test_settled_once_no_move_is_in_flight() -> None:
    three = [made(f"web.{s}.1", s, "n1") for s in (1, 2, 3)]
    assert rebalance.settled(three, 3)
    overlap = [*three, made("web.3.2", 3, "n3", state="starting", moved_from="n1")]
    assert not rebalance.settled(overlap, 3)
    assert not rebalance.settled(three[:2], 3)
