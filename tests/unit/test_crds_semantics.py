"""crds.semantics: per-kind rules a schema cannot express (Service, Secret, Network, CRD)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
import yaml

from shoal.crds import admission, kinds
from tests.unit.crds_support import WEBSITE_CRD, errors_of, service


@pytest.fixture
def registry() -> kinds.Registry:
    return kinds.Registry.builtin()


# --- semantic checks ----------------------------------------------------------------------


def test_service_semantics(registry: kinds.Registry) -> None:
    doc = service(
        placement={"constraints": ["node.role==boss", "node.labels.zone==a", "bogus"],
                   "preferences": [{"spread": "zone"}]},
        endpoint={"ports": [{"published": 80, "target": 80},
                            {"published": 80, "target": 81, "protocol": "udp"},
                            {"published": 80, "target": 82}]},
    )
    doc["spec"]["template"].update(
        mounts=[{"type": "bind", "target": "data"}, {"type": "tmpfs", "source": "x",
                                                      "target": "/t"}],
        healthcheck={"test": ["curl", "localhost"]},
        resources={"limits": {"memory": "64Mi"}, "reservations": {"memory": "1Gi"}})
    assert errors_of(doc, registry) == [
        'spec.placement.constraints[0]: invalid constraint "node.role==boss": node.role is '
        "manager or worker",
        'spec.placement.constraints[2]: invalid constraint "bogus": write <key>==<value> or '
        "<key>!=<value>, where <key> is one of node.id, node.hostname, node.ip, node.role, "
        "node.platform.os, node.platform.arch, node.labels.<key>, engine.labels.<key>",
        "spec.endpoint.ports[2].published: port 80/tcp is already published by ports[0]",
        'spec.template.mounts[0].target: must be an absolute path, got "data"',
        "spec.template.mounts[0].source: required for a bind mount: the host path to mount",
        "spec.template.mounts[1].source: a tmpfs mount takes no source",
        'spec.template.healthcheck.test[0]: must be NONE, CMD or CMD-SHELL, got string "curl" '
        '(write [CMD, prog, arg...] or [CMD-SHELL, "command line"])',
        "spec.template.resources.reservations.memory: reserves more than the limit "
        "(1Gi > 64Mi)",
    ]


def test_dnsrr_cannot_publish_through_the_mesh(registry: kinds.Registry) -> None:
    doc = service(endpoint={"mode": "dnsrr", "ports": [{"target": 80, "published": 80}]})
    assert errors_of(doc, registry) == [
        "spec.endpoint.ports[0].mode: endpoint mode dnsrr cannot publish in ingress mode; "
        "use mode: host, or endpoint mode vip"]
    doc["spec"]["endpoint"]["ports"][0]["mode"] = "host"
    admission.admit(doc, registry)


def test_semantic_checks_survive_wrong_types(registry: kinds.Registry) -> None:
    doc = service(placement={"constraints": "node.role==manager", "preferences": [5]},
                  endpoint={"ports": {"a": 1}})
    doc["spec"]["template"].update(mounts="x", healthcheck=[], resources={"limits": 5})
    assert len(errors_of(doc, registry)) == 6


def test_secret_data(registry: kinds.Registry) -> None:
    good: dict[str, Any] = {
        "apiVersion": "shoal.io/v1", "kind": "Secret", "metadata": {"name": "key"},
        "spec": {"data": base64.b64encode(b"\x00\x01secret").decode()}}
    admission.admit(good, registry)
    wrapped = copy.deepcopy(good)
    wrapped["spec"]["data"] = base64.encodebytes(b"x" * 100).decode()  # has line breaks
    admission.admit(wrapped, registry)
    bad = copy.deepcopy(good)
    bad["spec"]["data"] = "not base64!"
    assert errors_of(bad, registry) == [
        'spec.data: "not base64!" is not valid base64: encode the bytes with `base64 -w0 FILE`']
    big = copy.deepcopy(good)
    big["spec"]["data"] = base64.b64encode(b"x" * (500 * 1024 + 1)).decode()
    assert errors_of(big, registry) == [
        "spec.data: is 512001 bytes decoded; a secret holds at most 512000 bytes (500 KiB)"]


def test_network_semantics(registry: kinds.Registry) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Network", "metadata": {"name": "front"},
           "spec": {"subnet": "10.0.9.0/24", "gateway": "10.0.10.1", "ingress": True,
                    "attachable": True}}
    assert errors_of(doc, registry) == [
        "spec.attachable: an ingress network cannot be attachable",
        "spec.gateway: 10.0.10.1 is not inside subnet 10.0.9.0/24"]


def test_service_networks_are_names_or_name_and_aliases(registry: kinds.Registry) -> None:
    doc = service(networks=["front", {"name": "back", "aliases": ["db", "store.v1"]}])
    admission.admit(doc, registry)
    bad = service(networks=["front", 5, {"aliases": ["x"]}, {"name": "front"},
                            {"name": "back", "aliases": ["-db", "a..b", "ok"], "alias": []}])
    assert errors_of(bad, registry) == [
        "spec.networks[1]: must be a string or an object, got integer 5",
        "spec.networks[2].name: required field missing",
        'spec.networks[4].alias: unknown field "alias"; did you mean "aliases"?',
        'spec.networks[3]: network "front" is already listed at spec.networks[0]; list each '
        "network once, with all its aliases",
        'spec.networks[4].aliases[0]: "-db" is not a valid alias: use letters, digits, '
        "'_', '.' and '-', starting and ending with a letter or digit (e.g. db)",
        'spec.networks[4].aliases[1]: "a..b" is not a valid alias: use letters, digits, '
        "'_', '.' and '-', starting and ending with a letter or digit (e.g. db)"]


def test_task_keeps_unknown_fields(registry: kinds.Registry) -> None:
    doc: dict[str, Any] = {
        "apiVersion": "shoal.io/v1", "kind": "Task", "metadata": {"name": "web.1.abc"},
        "spec": {"serviceName": "web", "slot": 1, "template": {"image": "x", "new": 1},
                 "restartAt": "later"},
        "status": {"state": "running", "containerId": "c1", "extra": [1]}}
    task = admission.admit(doc, registry)
    assert task.spec["desiredState"] == "running" and task.status["extra"] == [1]
    doc["status"]["state"] = "exploded"
    [message] = errors_of(doc, registry)
    assert message.startswith("status.state: must be one of new, pending, assigned, ")


def test_bad_crd_reports_everything(registry: kinds.Registry) -> None:
    doc = yaml.safe_load("""
apiVersion: shoal.io/v1
kind: CustomResourceDefinition
metadata: {name: website.example.com}
spec:
  group: example.com
  names: {kind: website, plural: Websites}
  versions:
    - name: v1
      storage: false
      schema:
        openAPIV3Schema:
          type: array
          properties:
            spec: {type: object, properties: {a: {type: integer, default: x}, b: 5}}
    - name: v2
""")
    assert errors_of(doc, registry) == [
        'spec.names.kind: must be CamelCase starting with a capital letter, such as Website; '
        'got "website"',
        'spec.names.plural: must be a lowercase DNS label such as websites; got "Websites"',
        "spec.versions: exactly one version must have storage: true, got 0",
        'spec.versions[0].schema.openAPIV3Schema.type: must be "object" at the top of a '
        "kind's schema, got string \"array\"",
        "spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.a.default: default "
        'does not fit its schema: must be an integer, got string "x"',
        "spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.b: must be a "
        "schema (an object), got integer 5",
        "spec.versions[1].schema.openAPIV3Schema: required field missing: a kind needs a "
        "schema ({type: object, x-kubernetes-preserve-unknown-fields: true} accepts anything)",
    ]


def test_crd_name_must_be_plural_dot_group(registry: kinds.Registry) -> None:
    doc = yaml.safe_load(WEBSITE_CRD)
    doc["metadata"]["name"] = "website.example.com"
    assert errors_of(doc, registry) == [
        'metadata.name: must be "websites.example.com" (<plural>.<group>), '
        'got "website.example.com"']


def test_lone_version_is_stored_unless_it_says_otherwise(registry: kinds.Registry) -> None:
    doc = yaml.safe_load(WEBSITE_CRD)
    del doc["spec"]["versions"][0]["storage"]
    admission.admit(doc, registry)
    doc["spec"]["versions"][0]["storage"] = False
    assert errors_of(doc, registry) == [
        "spec.versions: exactly one version must have storage: true, got 0"]


def test_rebalance_defaults_and_bounds(registry: kinds.Registry) -> None:
    doc = service(placement={"rebalance": {"enabled": True}})
    admitted = admission.admit(doc, registry)
    assert admitted.spec["placement"]["rebalance"] == {
        "enabled": True, "maxSkew": 1, "maxMovesPerMinute": 6}
    bad = service(placement={"rebalance": {"maxSkew": 0, "maxMovesPerMinute": 0}})
    found = errors_of(bad, registry)
    assert any(e.startswith("spec.placement.rebalance.maxSkew") for e in found), found
    assert any(e.startswith("spec.placement.rebalance.maxMovesPerMinute") for e in found), found


def test_rebalance_refused_for_a_global_service(registry: kinds.Registry) -> None:
    doc = service(mode="global", placement={"rebalance": {"enabled": True}})
    assert errors_of(doc, registry) == [
        "spec.placement.rebalance.enabled: a global service runs one task on every eligible "
        "node, so there is nothing to rebalance; remove spec.placement.rebalance or use "
        "mode: replicated"]


def test_published_port_given_as_a_list_is_reported_not_a_crash(
        registry: kinds.Registry) -> None:
    """Fuzzing found it: the duplicate-port check hashed ``published`` and raised
    TypeError on a list, so apply printed an internal error instead of the field's."""
    doc = service(endpoint={"ports": [{"target": 80, "published": [8080]},
                                      {"target": 81, "published": {"a": 1}}]})
    found = errors_of(doc, registry)
    assert any(e.startswith("spec.endpoint.ports[0].published: must be") for e in found), found
    assert any(e.startswith("spec.endpoint.ports[1].published: must be") for e in found), found
