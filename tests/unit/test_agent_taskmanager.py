"""shoal.agent.taskmanager without etcd or an executor: the task cache against its own
status-write replies, and the executor's view of a Task (task_spec, stop_options).

A write's reply can be handled after the watch already reported the task deleted — the
orchestrator deletes a task within milliseconds of reading ``shutdown``. Seen in
bench/converge.py: the reply put the deleted task back into the cache, and its stopped
container was never removed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

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


def _with_template(template: Any) -> resource.Resource:
    return resource.new("Task", "web.1.1", "bench",
                        spec={"nodeName": "n1", "template": template, "slot": 1})


def test_task_spec_reads_through_the_template_accessors() -> None:
    template = {"image": "shoal/busybox", "command": ["sleep", "1"]}
    spec = taskmanager.task_spec(_with_template(template), "n1")
    assert (spec.node, spec.slot, spec.template) == ("n1", 1, template)


@pytest.mark.parametrize(("template", "message"), [
    ("not a mapping", 'invalid task: spec.template: must be a mapping, got string '
                      '"not a mapping"'),
    ({"command": ["x"]}, "invalid task: spec.template.image: must be a non-empty string"),
    # Stricter than the agent used to be, as admission is: a hand-written Task with a
    # command as one string is rejected (Compose splits it; Shoal's manifest does not).
    ({"image": "x", "command": "sh -c x"}, 'invalid task: spec.template.command: must be '
                                           'a list of strings, got string "sh -c x"'),
    ({"image": "x", "env": ["A=1"]}, "invalid task: spec.template.env: must be a mapping"),
    ({"image": "x", "stopGracePeriod": "soon"},
     'invalid task: spec.template.stopGracePeriod: invalid duration "soon"'),
])
def test_task_spec_rejects_what_admission_refuses(template: Any, message: str) -> None:
    with pytest.raises(taskmanager.InvalidTaskError) as err:
        taskmanager.task_spec(_with_template(template), "n1")
    assert str(err.value).startswith(message)


def test_stop_options_fall_back_for_garbage() -> None:
    assert taskmanager.stop_options(None) == (10.0, None)
    assert taskmanager.stop_options(_with_template("garbage")) == (10.0, None)
    assert taskmanager.stop_options(_with_template(
        {"stopGracePeriod": "soon", "stopSignal": "SIGINT"})) == (10.0, "SIGINT")
    assert taskmanager.stop_options(_with_template(
        {"stopGracePeriod": "2s", "stopSignal": 9})) == (2.0, None)
