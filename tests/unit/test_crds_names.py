"""crds.names: Docker's names per kind (swarmkit's lengths), DNS-1123 for the rest, and
dns_label, the one mapping of a name to a DNS label."""

from __future__ import annotations

import pytest

from shoal.crds import admission, kinds, names


@pytest.fixture(scope="module")
def registry() -> kinds.Registry:
    return kinds.Registry.builtin()


def _doc(kind: str, name: str) -> dict[str, object]:
    spec: dict[str, object] = {"Service": {"template": {"image": "shoal/busybox"}},
                               "Secret": {"data": "eA=="}, "Config": {"data": "x"},
                               "Network": {}, "Node": {}}[kind]
    return {"apiVersion": "shoal.io/v1", "kind": kind, "metadata": {"name": name},
            "spec": spec}


def _name_errors(doc: dict[str, object], registry: kinds.Registry) -> list[str]:
    try:
        admission.admit(doc, registry)
    except admission.ValidationError as exc:
        return [str(e) for e in exc.errors if e.path == "metadata.name"]
    return []


@pytest.mark.parametrize("kind", ["Service", "Network", "Secret", "Config"])
@pytest.mark.parametrize("name", ["hyperf_v1.0", "nginx_network", "Web", "a", "my-web",
                                  "a" * 63])
def test_docker_names_are_admitted(registry: kinds.Registry, kind: str, name: str) -> None:
    assert _name_errors(_doc(kind, name), registry) == []


@pytest.mark.parametrize(("kind", "name", "fragment"), [
    ("Service", "-bad", 'did you mean "bad"?'),
    ("Service", "a b", 'did you mean "a-b"?'),
    ("Service", "web_", "starting and ending with a letter or digit"),
    ("Service", "a" * 64, "at most 63 characters (Docker's rule); this one has 64"),
    ("Network", "a" * 64, "at most 63 characters"),
    ("Secret", "a" * 65, "at most 64 characters (Docker's rule); this one has 65"),
    ("Config", "x/y", "use letters, digits, '_', '.' and '-'"),
    ("Service", "a..b", "'..' is not allowed"),
])
def test_names_docker_refuses(registry: kinds.Registry, kind: str, name: str,
                              fragment: str) -> None:
    [message] = _name_errors(_doc(kind, name), registry)
    what = f"{kind.lower()} name"
    assert message.startswith("metadata.name: ") and f"is not a valid {what}" in message
    assert fragment in message


def test_secret_and_config_take_64_and_dots_anywhere(registry: kinds.Registry) -> None:
    # swarmkit's rule for secrets and configs: 64 characters, '..' allowed (no DNS).
    assert _name_errors(_doc("Secret", "s" * 64), registry) == []
    assert _name_errors(_doc("Config", "site..conf"), registry) == []


def test_other_kinds_keep_dns_1123(registry: kinds.Registry) -> None:
    [message] = _name_errors(_doc("Node", "Node_1"), registry)
    assert "use lowercase letters" in message and 'did you mean "node-1"?' in message
    assert names.name_rule("Widget") is names.DEFAULT_RULE
    assert names.name_rule(None) is names.DEFAULT_RULE


def test_task_names_carry_the_service_name() -> None:
    rule = names.name_rule("Task")
    assert rule.error("hyperf_v1.0.1.3") is None
    assert rule.error("Web.node-1.2") is None


def test_dns_label_keeps_labels_and_maps_the_rest_deterministically() -> None:
    assert names.dns_label("web") == "web"
    assert names.dns_label("my-web-2") == "my-web-2"
    mapped = names.dns_label("hyperf_v1.0")
    assert mapped == names.dns_label("hyperf_v1.0")  # same everywhere, every time
    assert mapped.startswith("hyperf-v1-0-") and len(mapped) == len("hyperf-v1-0-") + 6
    assert names.is_dns_label(mapped)


@pytest.mark.parametrize("pair", [("a_b", "a-b"), ("Web", "web"), ("a.b", "a_b"),
                                  ("x" * 63 + "", "x" * 60 + "_yz")])
def test_dns_label_never_collides_across_distinct_names(pair: tuple[str, str]) -> None:
    first, second = pair
    assert names.dns_label(first) != names.dns_label(second)


def test_dns_label_fits_63_and_handles_edge_names() -> None:
    long = "A_" * 40
    assert len(names.dns_label(long)) <= 63 and names.is_dns_label(names.dns_label(long))
    for odd in ("___", "..", "-"):
        assert names.is_dns_label(names.dns_label(odd))


def _ns_errors(namespace: str, registry: kinds.Registry) -> list[str]:
    doc = _doc("Service", "web")
    doc["metadata"] = {"name": "web", "namespace": namespace}
    try:
        admission.admit(doc, registry)
    except admission.ValidationError as exc:
        return [str(e) for e in exc.errors if e.path == "metadata.namespace"]
    return []


@pytest.mark.parametrize("namespace", ["my_app", "my_app.v1", "hyperf_v1.0", "MyStack",
                                       "shop", "a" * 63])
def test_namespaces_take_docker_stack_names(registry: kinds.Registry, namespace: str) -> None:
    # `docker stack deploy -c x.yml my_app`: the stack name is the namespace.
    assert _ns_errors(namespace, registry) == []
    assert names.namespace_error(namespace) is None


@pytest.mark.parametrize(("namespace", "fragment"), [
    ("-x", 'did you mean "x"?'),
    ("a b", 'did you mean "a-b"?'),
    ("my/app", "use letters, digits, '_', '.' and '-'"),
    ("a" * 64, "at most 63 characters (Docker's rule); this one has 64"),
    ("my..app", "'..' is not allowed"),
])
def test_namespaces_docker_refuses(registry: kinds.Registry, namespace: str,
                                   fragment: str) -> None:
    [message] = _ns_errors(namespace, registry)
    assert message.startswith("metadata.namespace: ") and "is not a valid namespace" in message
    assert fragment in message
    assert names.namespace_error(namespace) == message.removeprefix("metadata.namespace: ")


def test_a_stack_name_maps_to_a_dns_label_by_the_one_rule() -> None:
    label = names.dns_label("my_app.v1")
    assert names.is_dns_label(label) and label.startswith("my-app-v1-")
    assert names.dns_label("shop") == "shop"
