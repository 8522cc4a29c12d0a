"""shoal.agent.taskmanager without etcd or an executor: the task cache against its own
status reports, and the executor's view of a Task (task_spec, stop_options).

A report's reply can be handled after the watch already reported the task deleted — the
orchestrator deletes a task within milliseconds of reading ``shutdown``. Seen in
bench/converge.py: the reply put the deleted task back into the cache, and its stopped
container was never removed.
"""

from __future__ import annotations

from typing import Any

import pytest

from shoal.agent import taskmanager
from shoal.crds import resource

KEY = "bench/web.1.1"
SHUTDOWN = {"state": "shutdown"}


def _task(uid: str, revision: int) -> resource.Resource:
    obj = resource.new("Task", "web.1.1", "bench", spec={"nodeName": "n1"})
    obj.metadata.uid = uid
    obj.metadata.resourceVersion = str(revision)
    return obj


class _Writer:
    """Records which reports the manager asks to delete."""

    def __init__(self) -> None:
        self.forgotten: list[tuple[str, str]] = []

    def forget(self, manager: Any, key: str, uid: str) -> None:
        self.forgotten.append((key, uid))


def _manager() -> tuple[taskmanager.TaskManager, _Writer]:
    writer = _Writer()
    executor: Any = None  # not touched by the cache methods
    fake_writer: Any = writer
    return taskmanager.TaskManager("n1", executor, fake_writer), writer


def test_a_report_reply_after_the_delete_does_not_resurrect_the_task() -> None:
    mgr, writer = _manager()
    mgr.upsert(_task("u1", 5))
    mgr.delete(KEY)
    mgr.remember_status(KEY, "u1", SHUTDOWN)
    assert mgr.cached(KEY) is None
    assert writer.forgotten == [(KEY, "u1")]  # its report is deleted with it


def test_a_report_reply_does_not_touch_a_namesake() -> None:
    mgr, writer = _manager()
    mgr.upsert(_task("u1", 5))
    mgr.upsert(_task("u2", 7))  # deleted and re-created between two events
    mgr.remember_status(KEY, "u1", SHUTDOWN)
    cached = mgr.cached(KEY)
    assert cached is not None and cached.metadata.uid == "u2" and cached.status == {}
    assert writer.forgotten == [(KEY, "u1")]


def test_the_reported_status_survives_a_new_version_of_the_projection() -> None:
    mgr, _ = _manager()
    mgr.upsert(_task("u1", 5))
    mgr.remember_status(KEY, "u1", {"state": "running"})
    mgr.upsert(_task("u1", 9))  # desired state changed: the projection has no status
    cached = mgr.cached(KEY)
    assert cached is not None and cached.status == {"state": "running"}
    assert mgr.is_echo(KEY, 9) and not mgr.is_echo(KEY, 10)


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
