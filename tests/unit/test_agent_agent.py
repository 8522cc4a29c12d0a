"""The agent's raw-value prefilter: tasks of other nodes are skipped without decoding,
and nothing that might be ours is ever skipped."""

from __future__ import annotations

import json

import orjson

from shoal.agent.agent import may_be_ours

OURS = {b"hollow-7", "nœud-1".encode()}


def task(spec: dict[str, object], dumps: bool = False) -> bytes:
    doc = {"kind": "Task", "metadata": {"name": "web.1.1"}, "spec": spec}
    return json.dumps(doc).encode() if dumps else orjson.dumps(doc)


def test_pending_and_other_nodes_are_skipped() -> None:
    assert not may_be_ours(task({"slot": 1}), OURS)
    assert not may_be_ours(task({"nodeName": "hollow-70"}), OURS)
    assert not may_be_ours(task({"nodeName": "hollow-7x", "slot": 1}, dumps=True), OURS)


def test_our_nodes_match_in_any_writer_spacing() -> None:
    assert may_be_ours(task({"nodeName": "hollow-7"}), OURS)
    assert may_be_ours(task({"nodeName": "hollow-7"}, dumps=True), OURS)  # ": " spacing
    assert may_be_ours(task({"nodeName": "nœud-1"}), OURS)  # raw UTF-8


def test_anything_the_pattern_cannot_read_is_decoded() -> None:
    # stdlib json escapes non-ASCII: the pattern sees no plain name, the decoder decides
    assert may_be_ours(task({"nodeName": "nœud-1"}, dumps=True), OURS)
    assert may_be_ours(task({"nodeName": 'odd"name'}), OURS)  # an escaped quote
    assert may_be_ours(b'{"spec":{"node\\u004eame":"hollow-7"}}', OURS)  # escaped key
    # a nested key of the same name that names another node does not hide ours
    nested = task({"template": {"labels": {"nodeName": "other"}}, "nodeName": "hollow-7"})
    assert may_be_ours(nested, OURS)
