"""Which copies a task needs on its node, and what a copy and a tombstone hold."""

from __future__ import annotations

from shoal.controllers.distributor import copies
from shoal.crds import resource


def task(template: object, state: str = "running") -> resource.Resource:
    obj = resource.new("Task", "web.1", "prod", spec={"nodeName": "n1", "template": template})
    obj.status["state"] = state
    return obj


TEMPLATE = {"image": "x", "secrets": [{"source": "db"}], "configs": [{"source": "site"}]}


def test_a_live_task_needs_its_secrets_and_configs_on_its_node() -> None:
    assert copies.wanted(task(TEMPLATE), "n1") == {
        copies.Ref("n1", "secrets", "prod", "db"), copies.Ref("n1", "configs", "prod", "site")}


def test_ended_unassigned_plain_or_garbage_tasks_need_nothing() -> None:
    assert copies.wanted(task(TEMPLATE, state="shutdown"), "n1") == frozenset()
    assert copies.wanted(task(TEMPLATE), None) == frozenset()
    assert copies.wanted(task({"image": "x"}), "n1") == frozenset()
    assert copies.wanted(task({"image": "x", "secrets": "db"}), "n1") == frozenset()


def test_a_copy_records_its_source_version_and_a_tombstone_says_missing() -> None:
    source = resource.new("Secret", "db", "prod", spec={"sealed": {"ciphertext": "..."}})
    source.metadata.resourceVersion = "42"
    ref = copies.Ref("n1", "secrets", "prod", "db")
    made = copies.copy_of(source, ref)
    assert made.spec == source.spec and made.kind == "Secret"
    assert copies.recorded_version(made.to_dict()) == "42" == copies.version_of(source)
    assert "shoal.io/source-revision" not in source.metadata.annotations  # source untouched
    gone = copies.copy_of(None, ref)
    assert gone.metadata.annotations == {copies.MISSING_ANNOTATION: "true"}
    assert copies.recorded_version(gone.to_dict()) == "" == copies.version_of(None)
    assert copies.recorded_version({"metadata": []}) is None
