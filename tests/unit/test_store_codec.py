"""Decoded tasks of one service generation share one template object (and tasks of one
owner one ownerReferences list), and only an equal one."""

from __future__ import annotations

import orjson

from shoal.store import codec


def task(name: str, gen: int, image: str, namespace: str = "default") -> bytes:
    return orjson.dumps({
        "apiVersion": "shoal.io/v1", "kind": "Task",
        "metadata": {"name": name, "namespace": namespace,
                     "ownerReferences": [{"kind": "Service", "name": "web",
                                          "uid": f"uid-{namespace}"}]},
        "spec": {"serviceName": "web", "serviceGeneration": gen, "slot": 1,
                 "template": {"image": image, "command": ["httpd", "-f"]}},
        "status": {"state": "running"}})


def test_equal_templates_of_a_service_generation_are_one_object() -> None:
    a = codec.decode(task("web.1.1", 7, "busybox"), 10)
    b = codec.decode(task("web.2.1", 7, "busybox"), 11)
    assert a.spec["template"] is b.spec["template"]
    assert b.spec["template"] == {"image": "busybox", "command": ["httpd", "-f"]}
    assert a.metadata.ownerReferences is b.metadata.ownerReferences
    assert b.metadata.ownerReferences == [{"kind": "Service", "name": "web",
                                           "uid": "uid-default"}]


def test_a_different_template_is_never_shared() -> None:
    a = codec.decode(task("web.1.1", 8, "busybox"), 10)
    # Same service generation, other content (written by hand): kept as written.
    odd = codec.decode(task("web.2.1", 8, "nginx"), 11)
    assert odd.spec["template"]["image"] == "nginx"
    assert a.spec["template"]["image"] == "busybox"
    other_ns = codec.decode(task("web.1.1", 8, "busybox", namespace="prod"), 12)
    assert other_ns.spec["template"] == a.spec["template"]
    assert other_ns.metadata.ownerReferences[0]["uid"] == "uid-prod"
    assert codec.stored_spec_digest(other_ns) == codec.stored_spec_digest(
        codec.decode(task("web.1.1", 8, "busybox", namespace="prod"), 13))


def test_value_stored_under_another_identity_is_skipped() -> None:
    """Fuzzing found it: lists and watches cached a value by the name it gave itself, so
    a value copied to another key (or naming another kind or namespace) became a second
    object of that name that deleting its key never removed."""
    from shoal.crds import kinds

    tasks = kinds.Registry.builtin().lookup("tasks")
    base = codec.kind_prefix("/p", tasks)
    value = task("web.1.1", 1, "busybox")
    assert codec.decode_at(tasks, base, base + b"default/web.1.1", value, 3) is not None
    for key in (b"default/web.2.1", b"other/web.1.1", b"web.1.1"):
        assert codec.decode_at(tasks, base, base + key, value, 3) is None, key
    services = kinds.Registry.builtin().lookup("services")
    assert codec.decode_at(services, codec.kind_prefix("/p", services),
                           codec.kind_prefix("/p", services) + b"default/web.1.1",
                           value, 3) is None
