"""Apply-time reference checks: missing networks, secrets and configs, overlapping
subnets."""

from __future__ import annotations

from typing import Any

from shoal.crds import references, resource


def service(name: str = "web", namespace: str = "default", **spec: Any) -> resource.Resource:
    body: dict[str, Any] = {"template": {"image": "shoal/busybox"}}
    body.update(spec)
    return resource.new("Service", name, namespace, body)


def network(name: str, subnet: str | None = None, allocated: str | None = None,
            ingress: bool = False) -> resource.Resource:
    obj = resource.new("Network", name, spec={"subnet": subnet} if subnet else {})
    if ingress:
        obj.spec["ingress"] = True
    if allocated:
        obj.status = {"subnet": allocated}
    return obj


def secret(name: str, namespace: str = "default") -> resource.Resource:
    return resource.new("Secret", name, namespace, {"data": "aGk="})


def config(name: str, namespace: str = "default") -> resource.Resource:
    return resource.new("Config", name, namespace, {"data": "hi"})


def messages(problems: list[references.Problem]) -> list[tuple[str, str, str]]:
    return [(p.obj.name, p.field, p.message) for p in problems]


def test_references_in_field_order() -> None:
    svc = service(networks=["front", {"name": "back", "aliases": ["db"]}],
                  template={"image": "x", "secrets": [{"source": "db"}],
                            "configs": [{"source": "site", "target": "/etc/site"}]})
    assert references.references(svc) == [
        references.Reference("network", "front", None, "spec.networks[0]"),
        references.Reference("network", "back", None, "spec.networks[1].name"),
        references.Reference("secret", "db", "default", "spec.template.secrets[0].source"),
        references.Reference("config", "site", "default", "spec.template.configs[0].source"),
    ]


def test_missing_network_is_refused_with_swarm_s_wording() -> None:
    problems = references.check([service(networks=["nginx_network"])], [])
    assert messages(problems) == [("web", "spec.networks[0]",
                                   'network "nginx_network" not found')]
    assert "swctl network create nginx_network" in problems[0].fix


def test_network_stored_or_in_the_same_apply_satisfies_the_reference() -> None:
    svc = service(networks=["stored", "new"])
    assert references.check([svc, network("new")], [network("stored")]) == []
    # Order within the apply does not matter.
    assert references.check([network("new"), svc], [network("stored")]) == []


def test_a_network_being_deleted_is_missing_even_when_re_applied() -> None:
    going = network("old", "10.0.9.0/24")
    going.metadata.deletionTimestamp = "2026-01-01T00:00:00Z"
    svc = service(networks=["old"])
    expected = [("web", "spec.networks[0]", 'network "old" is being deleted')]
    assert messages(references.check([svc], [going])) == expected
    # Apply keeps the live deletionTimestamp: re-applying does not bring it back.
    assert messages(references.check([svc, network("old")], [going])) == expected
    # Its subnet is on its way out, free for a new network.
    assert references.check([network("new", "10.0.9.0/24")], [going]) == []


def test_ingress_is_there_while_the_allocator_creates_it() -> None:
    svc = service(networks=["ingress"])
    assert references.check([svc], []) == []
    # Another network is the mesh: the allocator makes no "ingress".
    assert messages(references.check([svc], [network("mesh", ingress=True)])) == [
        ("web", "spec.networks[0]", 'network "ingress" not found')]


def test_secrets_and_configs_are_looked_up_in_the_service_s_namespace() -> None:
    svc = service(namespace="shop", template={"image": "x", "secrets": [{"source": "db"}],
                                              "configs": [{"source": "site"}]})
    problems = references.check([svc], [secret("db"), config("site", "other")])
    assert messages(problems) == [
        ("web", "spec.template.secrets[0].source", 'secret "db" not found in namespace "shop"'),
        ("web", "spec.template.configs[0].source",
         'config "site" not found in namespace "shop"')]
    assert problems[0].fix.startswith("apply a Secret named db in namespace shop first")


def test_existing_secrets_and_configs_pass_and_a_missing_one_says_not_found() -> None:
    svc = service(template={"image": "x", "secrets": [{"source": "db"}, {"source": "gone"}],
                            "configs": [{"source": "site"}]})
    problems = references.check([svc, config("site")], [secret("db")])
    assert messages(problems) == [
        ("web", "spec.template.secrets[1].source", 'secret "gone" not found in namespace '
                                                   '"default"')]


def test_overlapping_subnet_with_a_stored_network() -> None:
    problems = references.check([network("b", "10.0.9.0/25")],
                                [network("appnet", "10.0.9.0/24")])
    assert messages(problems) == [("b", "spec.subnet", "subnet 10.0.9.0/25 of network 'b' "
                                   "overlaps 10.0.9.0/24 of network 'appnet'")]


def test_allocated_subnets_count_and_a_network_does_not_clash_with_itself() -> None:
    stored = [network("auto", allocated="10.0.1.0/24"), network("b", "10.0.9.0/24")]
    assert messages(references.check([network("c", "10.0.1.0/24")], stored)) == [
        ("c", "spec.subnet", "subnet 10.0.1.0/24 of network 'c' overlaps 10.0.1.0/24 of "
                             "network 'auto'")]
    assert references.check([network("b", "10.0.9.0/24")], stored) == []
    # Moving b's subnet away frees the old one for c in the same apply.
    assert references.check([network("b", "10.0.8.0/24"), network("c", "10.0.9.0/24")],
                            stored) == []


def test_two_networks_of_one_apply_overlapping_are_both_named() -> None:
    problems = references.check([network("x", "10.1.0.0/16"), network("y", "10.1.2.0/24")],
                                [])
    assert [(p.obj.name, p.message) for p in problems] == [
        ("x", "subnet 10.1.0.0/16 of network 'x' overlaps 10.1.2.0/24 of network 'y'"),
        ("y", "subnet 10.1.2.0/24 of network 'y' overlaps 10.1.0.0/16 of network 'x'")]


def test_a_subnet_in_the_vip_pool_is_refused() -> None:
    problems = references.check([network("v", "10.254.0.0/24")], [])
    assert problems[0].message == ("subnet 10.254.0.0/24 of network 'v' overlaps the "
                                   "service VIP pool 10.254.0.0/16")
