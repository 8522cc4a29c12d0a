"""Placement (``controllers/scheduler/placement.py``) with the filters it applies
(``filters.py``): spread, ordering, resources, ports, explanations of pending tasks.

Scenarios are the ones Swarm users rely on (spread 2/2/2 over zones, max replicas per
node, least-loaded ordering, pending explanations), checked on in-memory resources.
"""

from __future__ import annotations

from collections import Counter

from shoal.controllers import nodefacts
from shoal.controllers.scheduler import filters as flt
from shoal.controllers.scheduler import schedule
from tests.unit.scheduler_support import NOW, node, service, task, tasks_for, zones_of


def test_demand_reads_reservations_ports_and_placement() -> None:
    svc = service("web", cpus="500m", memory="64Mi", host_ports=[8080], max_per_node=2,
                  constraints=["node.role==worker"], spread=["node.labels.zone"],
                  platforms=[{"os": "linux", "architecture": "x86_64"}])
    d = flt.demand_for(("default", "web"), svc)
    assert d.nano_cpus == 500_000_000
    assert d.memory == 64 * 1024 * 1024
    assert d.host_ports == ((8080, "tcp"),)
    assert d.max_replicas == 2
    assert d.spread == ("node.labels.zone",)
    assert d.platforms == (("linux", "amd64"),)
    assert not d.error
    bad = service("bad", constraints=["node.labels.zone=a"], cpus="lots")
    err = flt.demand_for(("default", "bad"), bad).error
    assert "reservations.cpus" in err and "write <key>==<value>" in err


def test_explanation_names_constraint_and_drained_node() -> None:
    nodes = [node(f"n{i}", labels={"zone": "ab"[i % 2]}) for i in range(4)]
    nodes.append(node("n4", labels={"zone": "a"}, availability="drain"))
    svc = service("web", 1, constraints=["node.labels.zone==c"])
    result = schedule(tasks_for(svc), nodes, [], [svc])
    assert result.assignments == {}
    assert result.unplaced == {"default/web.1.1": "no suitable node (constraint "
                               "node.labels.zone==c matched 0 of 5 nodes; 1 node drained)"}


def test_explanation_counts_availability_by_category() -> None:
    nodes = [node("a", state="down"), node("b", state="down"), node("c", availability="pause"),
             node("d", availability="drain"), node("e", state="unknown")]
    svc = service("web")
    result = schedule(tasks_for(svc), nodes, [], [svc])
    assert result.unplaced["default/web.1.1"] == (
        "no suitable node (2 nodes down; 1 node not ready; 1 node paused; 1 node drained)")


def test_explanation_for_resources_ports_platform_and_max_replicas() -> None:
    nodes = [node("a", cpus=1, memory="1Gi"), node("b", cpus=4, memory="128Mi"),
             node("c", cpus=4, memory="4Gi", arch="arm64")]
    big = service("big", cpus=2, memory="256Mi", platforms=[{"os": "linux",
                                                               "architecture": "amd64"}])
    result = schedule(tasks_for(big), nodes, [], [big])
    assert result.unplaced["default/big.1.1"] == (
        "no suitable node (insufficient cpu on 1 node; insufficient memory on 1 node; "
        "platform linux/amd64 not supported on 1 node)")

    web = service("web", 3, host_ports=[80])
    two = [node("a"), node("b")]
    result = schedule(tasks_for(web), two, [], [web])
    assert sorted(result.assignments.values()) == ["a", "b"]
    assert result.unplaced == {"default/web.3.1":
                               "no suitable node (host port 80/tcp in use on 2 nodes)"}

    capped = service("capped", 5, max_per_node=2)
    result = schedule(tasks_for(capped), two, [], [capped])
    assert Counter(result.assignments.values()) == {"a": 2, "b": 2}
    assert result.unplaced == {"default/capped.5.1":
                               "no suitable node (max replicas per node (2) reached on 2 nodes)"}


def test_no_nodes_and_missing_service_and_bad_spec_are_explained() -> None:
    svc = service("web")
    assert schedule(tasks_for(svc), [], [], [svc]).unplaced == {
        "default/web.1.1": "no suitable node (no nodes in the cluster)"}
    assert schedule(tasks_for(svc), [node("a")], [], []).unplaced == {
        "default/web.1.1": "service default/web not found"}
    bad = service("bad", constraints=["node.colour==red"])
    reason = schedule(tasks_for(bad), [node("a")], [], [bad]).unplaced["default/bad.1.1"]
    assert reason.startswith('invalid service spec: invalid constraint "node.colour==red": '
                          'unknown key "node.colour"')


# --- placement -----------------------------------------------------------------------------


def test_spread_over_three_zones_lands_two_two_two() -> None:
    nodes = [node(f"{zone}{i}", labels={"zone": zone}) for zone in "abc" for i in (1, 2)]
    svc = service("web", 6, spread=["node.labels.zone"])
    result = schedule(tasks_for(svc), nodes, [], [svc])
    assert not result.unplaced
    assert zones_of(result, nodes) == {"a": 2, "b": 2, "c": 2}
    assert Counter(result.assignments.values()) == {n.metadata.name: 1 for n in nodes}


def test_spread_is_per_label_value_not_per_node() -> None:
    # Zone a has four nodes, b and c one each: Swarm still spreads 2/2/2 by zone.
    nodes = [node(f"a{i}", labels={"zone": "a"}) for i in range(4)]
    nodes += [node("b0", labels={"zone": "b"}), node("c0", labels={"zone": "c"})]
    svc = service("web", 6, spread=["node.labels.zone"])
    result = schedule(tasks_for(svc), nodes, [], [svc])
    assert zones_of(result, nodes) == {"a": 2, "b": 2, "c": 2}
    assert Counter(result.assignments.values())["b0"] == 2


def test_nodes_without_the_label_form_their_own_group() -> None:
    nodes = [node("a0", labels={"zone": "a"}), node("b0", labels={"zone": "b"}),
             node("x0"), node("x1")]
    svc = service("web", 6, spread=["node.labels.zone"])
    result = schedule(tasks_for(svc), nodes, [], [svc])
    assert zones_of(result, nodes) == {"a": 2, "b": 2, "-": 2}


def test_nested_spread() -> None:
    nodes = [node(f"{dc}{rack}{i}", labels={"dc": dc, "rack": f"{dc}{rack}"})
             for dc in "xy" for rack in "12" for i in range(2)]
    nodes.append(node("x3a", labels={"dc": "x", "rack": "x3"}))
    svc = service("web", 12, spread=["node.labels.dc", "node.labels.rack"])
    result = schedule(tasks_for(svc), nodes, [], [svc])
    labels = {n.metadata.name: n.metadata.labels for n in nodes}
    per_dc = Counter(labels[n]["dc"] for n in result.assignments.values())
    per_rack = Counter(labels[n]["rack"] for n in result.assignments.values())
    assert per_dc == {"x": 6, "y": 6}
    assert per_rack == {"x1": 2, "x2": 2, "x3": 2, "y1": 3, "y2": 3}


def test_spread_counts_tasks_already_running() -> None:
    nodes = [node(f"{zone}{i}", labels={"zone": zone}) for zone in "abc" for i in (1, 2)]
    svc = service("web", 6, spread=["node.labels.zone"])
    running = [task(svc, 1, node_name="a1", state="running"),
               task(svc, 2, node_name="a2", state="running")]
    result = schedule(tasks_for(svc, 4, start=3), nodes, running, [svc])
    assert zones_of(result, nodes) == {"b": 2, "c": 2}


def test_a_replacement_goes_where_the_service_runs_least_while_the_old_task_runs() -> None:
    # Rebalancing's start-first move: web runs 3/3/0; slots 3 and 6 get replacements
    # while their old tasks still run (and so still count on n1 and n2).
    nodes = [node("n1"), node("n2"), node("n3")]
    svc = service("web", 6)
    running = [task(svc, slot, node_name="n1" if slot <= 3 else "n2", state="running")
               for slot in range(1, 7)]
    moves = [task(svc, 3, seq=2), task(svc, 6, seq=2)]
    result = schedule(moves, nodes, running, [svc])
    assert result.assignments == {"default/web.3.2": "n3", "default/web.6.2": "n3"}
    # An old task told to stop no longer counts: n1's slot 3 replacement spreads as if
    # n1 ran two.
    stopping = [*running[:2], task(svc, 3, node_name="n1", state="running",
                                   desired="shutdown"), *running[3:]]
    result = schedule([task(svc, 3, seq=2)], [node("n1"), node("n2")], stopping, [svc])
    assert result.assignments == {"default/web.3.2": "n1"}


def test_fewest_service_tasks_then_fewest_tasks_overall() -> None:
    nodes = [node("a"), node("b"), node("c")]
    web, db = service("web", 3), service("db", 1)
    existing = [task(web, 1, node_name="a", state="running"),
                task(db, 1, node_name="b", state="running"),
                task(db, 2, node_name="b", state="running", desired="shutdown")]
    # web.2 -> b or c (0 web tasks); c has fewer tasks overall. Then b (0 web tasks).
    result = schedule([task(web, 2), task(web, 3)], nodes, existing, [web, db])
    assert result.assignments == {"default/web.2.1": "c", "default/web.3.1": "b"}


def test_batch_updates_counts_across_services() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    services = [service(f"s{i}", 2) for i in range(6)]
    pending = [t for s in services for t in tasks_for(s)]
    result = schedule(pending, nodes, [], services)
    assert Counter(result.assignments.values()) == {f"n{i}": 3 for i in range(4)}
    for s in services:  # each service still on two different nodes
        name = s.metadata.name
        assert len({v for k, v in result.assignments.items() if f"/{name}." in k}) == 2


def test_recently_failing_nodes_go_last() -> None:
    nodes = [node("a"), node("b")]
    svc = service("web", 1)
    failures = [task(svc, 1, node_name="a", state="failed", seq=i, timestamp=NOW - 60)
                for i in range(1, 6)]
    result = schedule([task(svc, 1, seq=9)], nodes, failures, [svc], now=NOW)
    assert result.assignments == {"default/web.1.9": "b"}
    # Four failures are not enough, and old failures are forgotten.
    for few in (failures[:4], [task(svc, 1, node_name="a", state="failed", seq=i,
                                    timestamp=NOW - 400) for i in range(1, 6)]):
        result = schedule([task(svc, 1, seq=9)], nodes, few, [svc], now=NOW)
        assert result.assignments == {"default/web.1.9": "a"}
    # Failures of an older generation do not count against the new one.
    newer = service("web", 1, generation=2)
    result = schedule([task(newer, 1, seq=9)], nodes, failures, [newer], now=NOW)
    assert result.assignments == {"default/web.1.9": "a"}


def test_failures_stamped_by_a_clock_hours_ahead_do_not_keep_a_node_last() -> None:
    # Found while adding the chaos harness's clock-jump fault: failures an agent stamped
    # with its wall clock 2 h ahead would count as "recent" for 2 h plus the window,
    # long after the clocks agree again; a stamp from the future tells nothing of when.
    nodes = [node("a"), node("b")]
    svc = service("web", 1)
    ahead = [task(svc, 1, node_name="a", state="failed", seq=i, timestamp=NOW + 7200)
             for i in range(1, 6)]
    result = schedule([task(svc, 1, seq=9)], nodes, ahead, [svc], now=NOW)
    assert result.assignments == {"default/web.1.9": "a"}


def test_reservations_subtract_live_tasks_on_the_node() -> None:
    nodes = [node("a", cpus=1, memory="1Gi"), node("b", cpus=1, memory="1Gi")]
    svc = service("web", 4, cpus=0.5, memory="256Mi")
    existing = [task(svc, 1, node_name="a", state="running"),
                # Told to stop but still running: it still holds its reservation.
                task(svc, 2, node_name="a", state="running", desired="shutdown"),
                # Ended: holds nothing.
                task(svc, 3, node_name="b", state="failed")]
    result = schedule(tasks_for(svc, 3, start=4), nodes, existing, [svc])
    assert Counter(result.assignments.values()) == {"b": 2}
    assert result.unplaced == {"default/web.6.1": "no suitable node (insufficient cpu on "
                                                  "2 nodes)"}


def test_host_port_held_by_another_service_blocks_the_node() -> None:
    nodes = [node("a"), node("b")]
    other, web = service("other", host_ports=[80]), service("web", 1, host_ports=[80])
    existing = [task(other, 1, node_name="a", state="running")]
    result = schedule(tasks_for(web), nodes, existing, [other, web])
    assert result.assignments == {"default/web.1.1": "b"}


def test_max_replicas_counts_existing_tasks() -> None:
    nodes = [node("a"), node("b")]
    svc = service("web", 4, max_per_node=2)
    existing = [task(svc, 1, node_name="a", state="running"),
                task(svc, 2, node_name="a", state="running")]
    result = schedule(tasks_for(svc, 3, start=3), nodes, existing, [svc])
    assert Counter(result.assignments.values()) == {"b": 2}
    assert len(result.unplaced) == 1


def test_pinned_tasks_are_checked_against_their_node() -> None:
    nodes = [node("a"), node("b", availability="pause"), node("c", labels={"zone": "x"})]
    svc = service("agent", 0, constraints=["node.labels.zone!=x"])
    pinned = [task(svc, 0, node_name=n, seq=i) for i, n in enumerate(["a", "b", "c", "z"])]
    result = schedule(pinned, nodes, pinned, [svc])
    assert result.assignments == {"default/agent.0.0": "a"}
    assert result.unplaced == {
        "default/agent.0.1": "node b unsuitable (paused)",
        "default/agent.0.2": "node c unsuitable (constraint node.labels.zone!=x not satisfied)",
        "default/agent.0.3": "node z not found",
    }


def test_tasks_not_desired_running_are_skipped() -> None:
    svc = service("web", 2)
    result = schedule([task(svc, 1, desired="shutdown"), task(svc, 2)], [node("a")], [], [svc])
    assert result.assignments == {"default/web.2.1": "a"}
    assert result.unplaced == {}


def test_constraints_pick_matching_nodes_only() -> None:
    nodes = [node("m", role="manager"), node("w1"), node("w2", labels={"disk": "ssd"})]
    svc = service("db", 3, constraints=["node.role==worker", "node.labels.disk==ssd"])
    result = schedule(tasks_for(svc), nodes, [], [svc])
    assert set(result.assignments.values()) == {"w2"}
    assert len(result.assignments) == 3


def test_placement_is_deterministic() -> None:
    nodes = [node(f"n{i:02d}", labels={"zone": "abc"[i % 3]}) for i in range(12)]
    services = [service(f"s{i}", 7, spread=["node.labels.zone"]) for i in range(5)]
    pending = [t for s in services for t in tasks_for(s)]
    first = schedule(pending, nodes, [], services)
    second = schedule(list(reversed(pending)), list(reversed(nodes)), [], services)
    assert first == second


def test_hundred_thousand_tasks_on_a_thousand_nodes_in_one_call() -> None:
    nodes = [node(f"node-{i:04d}", labels={"zone": f"z{i % 4}"}, cpus=16, memory="64Gi")
             for i in range(1000)]
    services = [service(f"svc{i}", 1000, cpus="10m", memory="32Mi",
                        spread=["node.labels.zone"] if i % 2 else None) for i in range(100)]
    pending = [t for s in services for t in tasks_for(s)]
    result = schedule(pending, nodes, [], services)
    assert len(result.assignments) == 100_000
    assert not result.unplaced
    per_node = Counter(result.assignments.values())
    assert len(per_node) == 1000 and set(per_node.values()) == {100}


def test_orchestrator_and_scheduler_read_the_same_nodes() -> None:
    garbage_platform = node("bad")
    garbage_platform.status["platform"] = "linux"  # not a mapping: no facts to match on
    garbage_resources = node("odd")
    garbage_resources.status["resources"] = ["many"]  # read as no capacity claims
    nodes = [node("a"), garbage_platform, garbage_resources]
    readable = nodefacts.readable_nodes(nodes)
    assert [n.metadata.name for n in readable] == ["a", "odd"]
    # Every node one may read, the scheduler's books can hold (nothing raises).
    infos = [flt.NodeInfo.of(n, i) for i, n in enumerate(readable)]
    assert infos[1].cpu_capacity == flt.UNLIMITED
