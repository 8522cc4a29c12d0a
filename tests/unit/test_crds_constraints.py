"""crds.constraints: the one placement-constraint grammar admission and the scheduler share.

Besides the grammar's own cases, a property test generates constraint strings — ones that
look right, near misses and junk — and checks the promise the module exists for: whatever
admission accepts, the scheduler can evaluate against any node, and whatever the
scheduler can evaluate, admission accepts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.controllers import nodefacts
from shoal.controllers.scheduler import filters as flt
from shoal.crds import admission, kinds
from shoal.crds import constraints as cons
from shoal.crds.resource import Resource, new

REGISTRY = kinds.Registry.builtin()


def service_doc(constraints: list[str], spread: list[str] | None = None) -> dict[str, Any]:
    placement: dict[str, Any] = {"constraints": constraints}
    if spread:
        placement["preferences"] = [{"spread": s} for s in spread]
    return {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"template": {"image": "x"}, "placement": placement}}


def admission_errors(constraints: list[str], spread: list[str] | None = None) -> list[str]:
    try:
        admission.admit(service_doc(constraints, spread), REGISTRY)
    except admission.ValidationError as exc:
        return [str(e) for e in exc.errors]
    return []


def scheduler_error(constraints: list[str], spread: list[str] | None = None) -> str:
    """What the scheduler says about a service with these constraints ("" = can place)."""
    service = new("Service", "web", "default", spec=service_doc(constraints, spread)["spec"])
    return flt.demand_for(("default", "web"), service).error


# --- the grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key", "op", "value", "label"), [
    ("node.labels.zone==a", "node.labels.zone", "==", "a", "zone"),
    ("  node.role != manager ", "node.role", "!=", "manager", ""),
    ("NODE.HOSTNAME==web-1", "node.hostname", "==", "web-1", ""),
    ("Node.Hostname==Box-1", "node.hostname", "==", "Box-1", ""),
    ("engine.labels.Disk==ssd", "engine.labels.Disk", "==", "ssd", "Disk"),
    ("node.labels.shoal.io/rack==r1", "node.labels.shoal.io/rack", "==", "r1", "shoal.io/rack"),
    ("node.labels.1zone==a", "node.labels.1zone", "==", "a", "1zone"),  # Swarm allows it
    ("node.ip==10.0.0.0/24", "node.ip", "==", "10.0.0.0/24", ""),
    ("node.role==Worker", "node.role", "==", "Worker", ""),
])
def test_parse_constraint(text: str, key: str, op: str, value: str, label: str) -> None:
    c = cons.parse_constraint(text)
    assert (c.key, c.op, c.value, c.label) == (key, op, value, label)
    assert str(c) == f"{key}{op}{value}"


def test_values_are_compared_lower_cased_and_architectures_normalised() -> None:
    assert cons.parse_constraint("node.labels.zone==East").want == "east"
    assert cons.parse_constraint("node.platform.arch==x86_64").want == "amd64"
    assert str(cons.parse_constraint("node.ip==10.0.0.7").network) == "10.0.0.7/32"


@pytest.mark.parametrize(("text", "fragment"), [
    ("node.role=manager", "write <key>==<value> or <key>!=<value>, where <key> is one of "
                          "node.id, node.hostname, node.ip, node.role"),
    ("nod.role==manager", 'unknown key "nod.role"; did you mean "node.role"?'),
    ("color==red", "keys are node.id, node.hostname, node.ip, node.role"),
    ("node.flavour==big", 'unknown key "node.flavour"'),
    ("node.labels.==a", "missing the label name after node.labels."),
    ("node.role==", "missing value after =="),
    ("node.labels.zone==", "missing value after =="),
    ("node.ip==not-an-ip", "node.ip takes an address or a CIDR such as 10.0.0.0/24"),
])
def test_parse_constraint_rejects(text: str, fragment: str) -> None:
    with pytest.raises(cons.ConstraintError) as err:
        cons.parse_constraint(text)
    assert str(err.value).startswith(f'invalid constraint "{text}": ')
    assert fragment in str(err.value)


def test_parse_spread() -> None:
    assert cons.parse_spread("node.labels.zone") == "node.labels.zone"
    assert cons.parse_spread("Engine.Labels.rack") == "engine.labels.rack"
    assert cons.parse_spread("zone") == "zone"  # spreads nothing, as in Swarm
    with pytest.raises(cons.ConstraintError,
                       match=r"node\.labels\.<key>, engine\.labels\.<key> or one of node\.id"):
        cons.parse_spread("")
    with pytest.raises(cons.ConstraintError, match="label name"):
        cons.parse_spread("node.labels.zo$ne")


# --- the divergences that were bugs (issue 11) -----------------------------------------


@pytest.mark.parametrize(("text", "fragment"), [
    # Admission passed these; the scheduler refused them, so the tasks stayed pending.
    ("node.labels.zone==a==b", 'the value "a==b" must not contain =, !, <, > or ~; write '
                               "one comparison per constraint"),
    ("node.labels.zone==a~b", 'the value "a~b" must not contain'),
    ("zone==a~b", 'unknown key "zone"'),
    ("node.labels.zo$ne==a", 'label name "zo$ne" may only hold letters, digits'),
    # The scheduler accepted this one and matched it against nothing.
    ("node.role==boss", "node.role is manager or worker"),
])
def test_admission_and_scheduler_refuse_alike(text: str, fragment: str) -> None:
    [message] = admission_errors([text])
    assert message == f'spec.placement.constraints[0]: invalid constraint "{text}": ' + \
        message.split(": ", 2)[2]
    assert fragment in message
    assert scheduler_error([text]) == message.split(": ", 1)[1]


@pytest.mark.parametrize("spread", ["", " "])
def test_an_empty_spread_is_refused_by_both(spread: str) -> None:
    # The scheduler used to skip an empty spread that admission refused. Found by the
    # property test below.
    [message] = admission_errors([], [spread])
    assert message.startswith(f'spec.placement.preferences[0].spread: invalid spread '
                              f'preference "{spread}"')
    assert scheduler_error([], [spread]) == message.split(": ", 1)[1]


@pytest.mark.parametrize("spread", ["node.id", "Node.Hostname", "node.platform.arch",
                                    "type", "node.role.manager"])
def test_spread_over_anything_else_is_accepted_by_both_as_docker_does(spread: str) -> None:
    # Docker takes `spread: node.id` (tiangolo's dockerswarm.rocks stacks use it), and
    # descriptors it cannot group by, which then spread nothing (corpus 042, 045).
    assert admission_errors([], [spread]) == []
    assert scheduler_error([], [spread]) == ""
    assert cons.spread_is_effective(cons.parse_spread(spread)) == ("." in spread
                                                                    and "role." not in spread)


# --- the property: admission and scheduler agree -------------------------------------------

_KEYS = st.sampled_from([*cons.PLAIN_KEYS, "NODE.Role", "Node.Platform.Arch", "node.labels",
                         "node.label.zone", "zone", "", "node.ip.x"])
_LABEL_TEXT = st.text(alphabet="azAZ09_.-/$ =!~", max_size=6)
_LABELLED = st.builds(lambda prefix, label: prefix + label,
                      st.sampled_from(["node.labels.", "engine.labels.", "Node.Labels."]),
                      _LABEL_TEXT)
_VALUES = st.one_of(
    st.sampled_from(["manager", "worker", "Manager", "boss", "10.0.0.0/8", "10.0.0.7",
                     "fd00::/8", "300.1.1.1", "amd64", "x86_64", "linux", "a", "", " "]),
    st.text(alphabet="abAB01 ./:*=!<>~$\t", max_size=8),
)
_OPERATORS = st.sampled_from(["==", "!=", "=", "!", "<", "=!", "==="])
_SPACE = st.sampled_from(["", " ", "  "])
_LOOKS_RIGHT = st.builds(lambda a, k, b, op, c, v, d: f"{a}{k}{b}{op}{c}{v}{d}",
                         _SPACE, st.one_of(_KEYS, _LABELLED), _SPACE, _OPERATORS, _SPACE,
                         _VALUES, _SPACE)
CONSTRAINTS = st.one_of(_LOOKS_RIGHT, st.text(max_size=30))


@st.composite
def nodes(draw: st.DrawFn) -> Resource:
    """Any node the agents could report: garbage addresses, odd labels, missing facts."""
    labels = draw(st.dictionaries(st.sampled_from(["zone", "Zone", "1zone", "shoal.io/rack"]),
                                  st.text(max_size=4), max_size=3))
    n = new("Node", "n1", labels=labels)
    n.metadata.uid = draw(st.sampled_from(["", "AbC", "uid-1"]))
    n.spec = {"role": draw(st.sampled_from(["manager", "worker", None, "Boss"]))}
    n.status = {
        "address": draw(st.sampled_from(["", "10.0.0.7", "fd00::1", "10.0.0.5:2377",
                                         "10.0.0.5/24", "garbage"])),
        "platform": {"os": draw(st.sampled_from(["", "linux", "Linux"])),
                     "architecture": draw(st.sampled_from(["", "x86_64", "arm64"]))},
        "engineLabels": draw(st.dictionaries(st.sampled_from(["zone", "disk"]),
                                             st.text(max_size=3), max_size=2)),
    }
    return n


@settings(max_examples=200, deadline=None)
@given(text=CONSTRAINTS, node_list=st.lists(nodes(), min_size=1, max_size=3))
def test_what_admission_accepts_the_scheduler_evaluates(text: str,
                                                        node_list: list[Resource]) -> None:
    accepted = not admission_errors([text])
    evaluable = scheduler_error([text]) == ""
    assert accepted == evaluable, text
    if accepted:
        service = new("Service", "web", "default", spec=service_doc([text])["spec"])
        demand = flt.demand_for(("default", "web"), service)
        for node in node_list:
            facts = nodefacts.NodeFacts.of(node)
            # Evaluating never raises, and != is the exact negation of == on every node.
            [constraint] = demand.constraints
            flipped = cons.parse_constraint(
                f"{constraint.key}{'!=' if constraint.op == '==' else '=='}{constraint.value}")
            assert nodefacts.matches(constraint, facts) != nodefacts.matches(flipped, facts)


@settings(max_examples=100, deadline=None)
@given(spread=st.one_of(_LABELLED, _KEYS, st.text(max_size=20)))
def test_what_admission_accepts_as_spread_the_scheduler_groups_by(spread: str) -> None:
    accepted = not admission_errors([], [spread])
    assert accepted == (scheduler_error([], [spread]) == ""), spread
