"""The agent's task cache against its own status-write replies (no etcd, no executor).

A write's reply can be handled after the watch already reported the task deleted — the
orchestrator deletes a task within milliseconds of reading ``shutdown``. Seen in
bench/converge.py: the reply put the deleted task back into the cache, and its stopped
container was never removed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shoal.agent import taskmanager
from shoal.crds import resource

KEY = "bench/web.1.1"


def _task(uid: str, revision: int) -> resource.Resource:
    obj = resource.new("Task", "web.1.1", "bench", spec={"nodeName": "n1"})
    obj.metadata.uid = uid
    obj.metadata.resourceVersion = str(revision)
    return obj


def _written(obj: resource.Resource, revision: int) -> resource.Resource:
    meta = obj.metadata.copy()
    meta.resourceVersion = str(revision)
    return dataclasses.replace(obj, metadata=meta, status={"state": "shutdown"})


def _manager() -> taskmanager.TaskManager:
    fake: Any = None  # neither executor nor writer is touched by the cache methods
    return taskmanager.TaskManager("n1", fake, fake)


def test_a_write_reply_after_the_delete_does_not_resurrect_the_task() -> None:
    mgr = _manager()
    task = _task("u1", 5)
    mgr.upsert(task)
    mgr.delete(KEY)
    mgr.remember(_written(task, 6))
    assert mgr.cached(KEY) is None


def test_a_write_reply_does_not_replace_a_namesake() -> None:
    mgr = _manager()
    old = _task("u1", 5)
    mgr.upsert(old)
    mgr.delete(KEY)
    mgr.upsert(_task("u2", 7))
    mgr.remember(_written(old, 6))
    cached = mgr.cached(KEY)
    assert cached is not None and cached.metadata.uid == "u2"


def test_a_write_reply_refreshes_the_cached_task() -> None:
    mgr = _manager()
    task = _task("u1", 5)
    mgr.upsert(task)
    mgr.remember(_written(task, 6))
    cached = mgr.cached(KEY)
    assert cached is not None and cached.metadata.resourceVersion == "6"
    assert mgr.is_echo(KEY, 6)
    mgr.remember(_written(task, 4))  # an older reply never wins
    cached = mgr.cached(KEY)
    assert cached is not None and cached.metadata.resourceVersion == "6"
