"""The pure parts of the unreadable-value reporter: naming an object from its key, and
which skipped values it notes (the Events themselves: tests/fuzz/test_fuzz_etcd.py)."""

from __future__ import annotations

from shoal.controllers import unreadable
from shoal.crds import kinds
from shoal.store import codec

LOOKUP = kinds.Registry.builtin().lookup


def test_names_namespaced_and_cluster_objects_from_their_keys() -> None:
    svc = unreadable.where_from_key("services/default/web", LOOKUP)
    assert svc is not None and (svc[0].kind, svc[1], svc[2]) == ("Service", "default", "web")
    node = unreadable.where_from_key("nodes/n1", LOOKUP)
    assert node is not None and (node[0].kind, node[1], node[2]) == ("Node", None, "n1")


def test_keys_that_name_no_object_are_not_named() -> None:
    for rest in ("widgets/default/x", "services/default", "services/default/a/b",
                 "services//x", "nodes/", "nodes/a/b"):
        assert unreadable.where_from_key(rest, LOOKUP) is None, rest


def test_notes_each_value_once_and_stays_bounded() -> None:
    reporter = unreadable.UnreadableReporter()
    try:
        codec.try_decode(b"/p/registry/services/default/x", b"not json", 7)
        assert list(reporter._noted) == [b"/p/registry/services/default/x"]
        reporter._reported[b"/p/registry/services/default/x"] = 7
        reporter._noted.clear()
        codec.try_decode(b"/p/registry/services/default/x", b"not json", 7)
        assert not reporter._noted  # the same value again (a relist): said already
        for i in range(unreadable.MAX_NOTED + 5):
            reporter.note(f"/p/registry/services/default/k{i}".encode(), i, "bad")
        assert len(reporter._noted) == unreadable.MAX_NOTED
        assert b"/p/registry/services/default/k0" not in reporter._noted  # oldest dropped
    finally:
        reporter.remove_listener()
    codec.try_decode(b"/p/registry/services/default/y", b"not json", 8)
    assert b"/p/registry/services/default/y" not in reporter._noted  # listener removed
