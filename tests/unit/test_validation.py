"""Admission: envelope checks, Swarm defaults, schema messages, semantic checks, user CRDs."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
import yaml

from shoal.crds import kinds, resource, validation
from shoal.crds.validation import FieldError, ValidationError

SOURCE = "file stack.yaml, document 2"


@pytest.fixture
def registry() -> kinds.Registry:
    return kinds.Registry.builtin()


def service(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"template": {"image": "shoal/busybox"}}
    body.update(spec)
    return {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": body}


def errors_of(doc: Any, registry: kinds.Registry, source: str = "") -> list[str]:
    with pytest.raises(ValidationError) as err:
        validation.admit(doc, registry, source)
    return [str(e) for e in err.value.errors]


# --- error formatting -------------------------------------------------------------------


def test_error_message_format_is_exact(registry: kinds.Registry) -> None:
    with pytest.raises(ValidationError) as err:
        validation.admit(service(replicas=-1), registry, SOURCE)
    assert str(err.value) == ("spec.replicas: must be >= 0, got -1 "
                              "(services/web, file stack.yaml, document 2)")
    assert err.value.ref == "services/web" and err.value.source == SOURCE
    assert err.value.errors == [FieldError("spec.replicas", "must be >= 0, got -1")]
    assert isinstance(err.value, ValueError)


def test_one_line_per_error_and_no_source() -> None:
    err = ValidationError([FieldError("a", "x"), FieldError("b.c", "y")], "nodes/n1")
    assert str(err).splitlines() == ["a: x (nodes/n1)", "b.c: y (nodes/n1)"]
    assert str(ValidationError([FieldError("a", "x")])) == "a: x"


def test_ref_names_a_non_default_namespace(registry: kinds.Registry) -> None:
    doc = service(replicas=-1)
    doc["metadata"]["namespace"] = "prod"
    with pytest.raises(ValidationError) as err:
        validation.admit(doc, registry)
    assert err.value.ref == "services/web in namespace prod"


def test_multiple_errors_reported_together(registry: kinds.Registry) -> None:
    doc = service(replicas=-1, mode="replica", replica=3)
    doc["spec"]["template"] = {"env": {"PORT": 8080}}
    doc["spec"]["restartPolicy"] = {"delay": "5x"}
    messages = errors_of(doc, registry)
    assert messages == [  # in document order
        "spec.template.image: required field missing",
        "spec.template.env.PORT: must be a string, got integer 8080; "
        "put it in quotes to keep it as text",
        "spec.replicas: must be >= 0, got -1",
        'spec.mode: must be one of replicated, global; got "replica"',
        'spec.replica: unknown field "replica"; did you mean "replicas"?',
        'spec.restartPolicy.delay: invalid duration "5x": use a number with a unit such as '
        "500ms, 5s, 1m30s",
    ]


# --- defaults -----------------------------------------------------------------------------


def test_minimal_service_gets_swarm_defaults(registry: kinds.Registry) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"template": {"image": "x"}}}
    obj = validation.admit(doc, registry)
    spec = obj.spec
    assert spec["mode"] == "replicated"
    assert spec["replicas"] == 1
    assert spec["restartPolicy"] == {"condition": "any", "delay": "5s", "maxAttempts": 0,
                                     "window": "0s"}
    assert spec["updateConfig"] == {"parallelism": 1, "delay": "0s", "failureAction": "pause",
                                    "monitor": "5s", "maxFailureRatio": 0,
                                    "order": "stop-first"}
    assert spec["rollbackConfig"] == spec["updateConfig"]
    assert spec["endpoint"] == {"mode": "vip"}
    assert spec["taskHistoryLimit"] == 5
    assert spec["template"]["stopGracePeriod"] == "10s"
    assert spec["forceUpdate"] == 0
    assert obj.namespace == resource.DEFAULT_NAMESPACE
    assert obj.apiVersion == "shoal.io/v1" and obj.kind == "Service"
    assert "spec" in doc and "replicas" not in doc["spec"], "admit must not modify its input"


def test_defaults_do_not_override_given_values(registry: kinds.Registry) -> None:
    doc = service(replicas=3, restartPolicy={"condition": "on-failure"},
                  endpoint={"ports": [{"target": 80, "published": 8080}]})
    spec = validation.admit(doc, registry).spec
    assert spec["replicas"] == 3
    assert spec["restartPolicy"] == {"condition": "on-failure", "delay": "5s",
                                     "maxAttempts": 0, "window": "0s"}
    assert spec["endpoint"]["ports"] == [{"target": 80, "published": 8080, "protocol": "tcp",
                                          "mode": "ingress"}]


def test_null_counts_as_absent_for_defaults(registry: kinds.Registry) -> None:
    doc = yaml.safe_load("""
apiVersion: shoal.io/v1
kind: Service
metadata: {name: web}
spec:
  template: {image: x}
  restartPolicy:
""")
    assert validation.admit(doc, registry).spec["restartPolicy"]["condition"] == "any"


def test_apply_defaults_only_creates_objects_with_a_default() -> None:
    schema = {"type": "object", "properties": {
        "made": {"type": "object", "default": {}, "properties": {"a": {"default": 1}}},
        "absent": {"type": "object", "properties": {"b": {"default": 2}}},
        "present": {"type": "object", "properties": {"c": {"default": 3}}},
        "list": {"type": "array", "items": {"type": "object",
                                            "properties": {"d": {"default": 4}}}},
        "map": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"e": {"default": 5}}}},
    }}
    doc: dict[str, Any] = {"present": {}, "list": [{}, {"d": 0}], "map": {"k": {}}}
    validation.apply_defaults(doc, schema)
    assert doc == {"made": {"a": 1}, "present": {"c": 3}, "list": [{"d": 4}, {"d": 0}],
                   "map": {"k": {"e": 5}}}


def test_defaults_are_copies() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "default": []}}}
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    validation.apply_defaults(first, schema)
    validation.apply_defaults(second, schema)
    first["a"].append(1)
    assert second == {"a": []}


def test_cluster_kinds_default_their_spec(registry: kinds.Registry) -> None:
    node = validation.admit({"apiVersion": "shoal.io/v1", "kind": "Node",
                             "metadata": {"name": "n1"}}, registry)
    assert node.spec == {"availability": "active", "role": "worker"}
    assert node.namespace is None
    net = validation.admit({"apiVersion": "shoal.io/v1", "kind": "Network",
                            "metadata": {"name": "frontend"}}, registry)
    assert net.spec == {"driver": "overlay", "attachable": False, "internal": False,
                        "ingress": False}


# --- the issue's example manifest ---------------------------------------------------------

EXAMPLE = """
apiVersion: shoal.io/v1
kind: Service
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  mode: replicated
  replicas: 3
  template:
    image: shoal/busybox
    command: [httpd, -f, -p, "8080", -h, /www]
    env: {GREETING: hello}
    healthcheck: {test: [CMD, nc, -z, 127.0.0.1, "8080"], interval: 5s, timeout: 2s, retries: 3}
    resources: {limits: {cpus: 0.5, memory: 64Mi}, reservations: {cpus: 0.1, memory: 16Mi}}
  placement: {constraints: ["node.labels.zone==a"], preferences: [{spread: node.labels.zone}],
              maxReplicasPerNode: 2}
  restartPolicy: {condition: any, delay: 5s, maxAttempts: 0, window: 0s}
  updateConfig: {parallelism: 1, delay: 0s, failureAction: pause, monitor: 5s,
                 maxFailureRatio: 0, order: stop-first}
  rollbackConfig: {parallelism: 1, order: stop-first}
  networks: [frontend]
  endpoint: {mode: vip, ports: [{published: 8080, target: 8080, protocol: tcp, mode: ingress}]}
---
apiVersion: shoal.io/v1
kind: Config
metadata: {name: site}
spec: {data: "hello"}
"""


def test_issue_example_manifest_is_accepted(registry: kinds.Registry) -> None:
    svc, cfg = (validation.admit(d, registry) for d in yaml.safe_load_all(EXAMPLE))
    assert svc.spec["replicas"] == 3 and svc.metadata.labels == {"app": "web"}
    assert svc.spec["rollbackConfig"]["failureAction"] == "pause"
    assert cfg.spec == {"data": "hello"} and cfg.ref == "config/default/site"


def test_global_mode_with_max_replicas_per_node_is_fine(registry: kinds.Registry) -> None:
    validation.admit(service(mode="global", placement={"maxReplicasPerNode": 1}), registry)


# --- envelope -----------------------------------------------------------------------------


def test_unknown_kind(registry: kinds.Registry) -> None:
    doc = service()
    doc["kind"] = "Servce"
    [message] = errors_of(doc, registry)
    assert message.startswith('kind: unknown kind "Servce": known kinds are configs, ')
    assert message.endswith('did you mean "Service"?')


def test_kind_must_be_spelled_exactly(registry: kinds.Registry) -> None:
    doc = service()
    doc["kind"] = "svc"
    assert errors_of(doc, registry) == ['kind: must be "Service" (the exact kind name), got "svc"']


def test_missing_kind_and_api_version(registry: kinds.Registry) -> None:
    messages = errors_of({"metadata": {"name": "web"}}, registry)
    assert messages == ["kind: required field missing; write e.g. kind: Service",
                        "apiVersion: required field missing; write apiVersion: shoal.io/v1"]


def test_bad_api_version(registry: kinds.Registry) -> None:
    doc = service()
    doc["apiVersion"] = "apps/v1"
    assert errors_of(doc, registry) == [
        'apiVersion: must be shoal.io/v1 for kind Service, got string "apps/v1"; '
        "write apiVersion: shoal.io/v1"]


def test_cluster_kind_with_namespace(registry: kinds.Registry) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Node",
           "metadata": {"name": "n1", "namespace": "default"}}
    assert errors_of(doc, registry) == [
        "metadata.namespace: nodes are cluster-scoped; remove metadata.namespace"]


@pytest.mark.parametrize(("name", "fragment"), [
    ("Web_1", 'did you mean "web-1"?'),
    ("-web", "starting and ending with a letter or digit"),
    ("a" * 254, "at most 253 characters"),
])
def test_invalid_names(registry: kinds.Registry, name: str, fragment: str) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Config", "metadata": {"name": name},
           "spec": {"data": "x"}}
    [message] = errors_of(doc, registry)
    assert message.startswith("metadata.name: ") and "is not a valid name" in message
    assert fragment in message


def test_missing_metadata_and_name(registry: kinds.Registry) -> None:
    doc = service()
    del doc["metadata"]
    assert errors_of(doc, registry) == [
        "metadata: required field missing; give at least metadata: {name: ...}"]
    doc["metadata"] = {"labels": {"app": "web"}}
    assert errors_of(doc, registry) == ["metadata.name: required field missing"]


def test_labels_and_annotations_are_string_maps(registry: kinds.Registry) -> None:
    doc = service()
    doc["metadata"].update(labels={"version": 2}, annotations=["a"], label={})
    assert errors_of(doc, registry) == [
        "metadata.labels.version: must be a string, got integer 2; "
        "put it in quotes to keep it as text",
        "metadata.annotations: must be an object, got an array",
        'metadata.label: unknown field "label"; did you mean "labels"?',
    ]


def test_top_level_fields(registry: kinds.Registry) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Config", "metadata": {"name": "site"},
           "data": "hello"}
    assert errors_of(doc, registry) == ['data: unknown field "data"; did you mean "spec.data"?',
                                        "spec: required field missing"]
    doc = {**service(), "specs": {}}
    assert errors_of(doc, registry) == ['specs: unknown field "specs"; did you mean "spec"?']


def test_not_a_mapping(registry: kinds.Registry) -> None:
    assert errors_of(["a"], registry) == [
        "a manifest document must be a mapping with apiVersion, kind, metadata and spec; "
        "got an array"]


def test_stored_object_round_trips(registry: kinds.Registry) -> None:
    """What the store hands back (uid, resourceVersion, ...) is admitted unchanged."""
    first = validation.admit(service(), registry)
    first.metadata.uid = "abc"
    first.metadata.resourceVersion = "42"
    first.metadata.generation = 1
    first.metadata.creationTimestamp = resource.now_rfc3339()
    first.metadata.finalizers = ["shoal.io/gc"]
    first.metadata.ownerReferences = [resource.owner_reference(first)]
    first.status = {"observedGeneration": 1, "anything": {"goes": True}}
    again = validation.admit(first.to_dict(), registry)
    assert again.to_dict() == first.to_dict()


# --- schema messages ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ({"replicas": "3"}, 'spec.replicas: must be an integer, got string "3"'),
    ({"replicas": True}, "spec.replicas: must be an integer, got boolean true"),
    ({"replicas": 2.5}, "spec.replicas: must be an integer, got number 2.5"),
    ({"updateConfig": {"maxFailureRatio": 1.5}},
     "spec.updateConfig.maxFailureRatio: must be <= 1, got 1.5"),
    ({"rollbackConfig": {"failureAction": "rollback"}},
     'spec.rollbackConfig.failureAction: must be one of pause, continue; got "rollback"'),
    ({"endpoint": {"ports": [{"target": 70000}]}},
     "spec.endpoint.ports[0].target: must be <= 65535, got 70000"),
    ({"endpoint": {"ports": [{"published": 80}]}},
     "spec.endpoint.ports[0].target: required field missing"),
    ({"template": {"image": ""}}, "spec.template.image: must not be empty"),
    ({"template": {"image": "x", "resources": {"limits": {"memory": "64X"}}}},
     'spec.template.resources.limits.memory: invalid size "64X": unknown unit "X"; use bytes or'
     " a number with a unit such as 512Ki, 64Mi, 1Gi, 1G or 64m"),
    ({"template": {"image": "x", "stopGracePeriod": 1.5}},
     "spec.template.stopGracePeriod: must be an integer or a string, got number 1.5"),
    ({"template": {"image": "x", "imagee": "y"}},
     'spec.template.imagee: unknown field "imagee"; did you mean "image"?'),
    ({"restart_policy": {}},
     'spec.restart_policy: unknown field "restart_policy"; did you mean "restartPolicy"?'),
    ({"networks": "frontend"}, 'spec.networks: must be an array, got string "frontend"'),
])
def test_schema_messages(registry: kinds.Registry, spec: dict[str, Any], message: str) -> None:
    assert errors_of(service(**spec), registry) == [message]


def test_unknown_field_without_close_match_lists_fields() -> None:
    schema = {"type": "object", "properties": {"alpha": {}, "beta": {}}}
    [error] = validation.validate({"zzz": 1}, schema, "spec")
    assert str(error) == 'spec.zzz: unknown field "zzz"; known fields are alpha, beta'


def test_validate_keywords() -> None:
    schema = {"type": "object", "properties": {
        "n": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        "s": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"},
        "l": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "integer"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "maybe": {"type": "string", "nullable": True},
        "ip": {"type": "string", "format": "ip"},
        "net": {"type": "string", "format": "cidr"},
        "odd key": {"type": "string"},
    }}
    doc = {"n": 0, "s": "ABCD", "l": [], "free": {"x": 1}, "maybe": None, "ip": "10.0.0.300",
           "net": "10.0.0.1/24", "odd key": 1}
    assert [str(e) for e in validation.validate(doc, schema)] == [
        "n: must be > 0, got 0",
        "s: must be at most 3 characters long, got 4",
        's: must match the pattern "^[a-z]+$", got "ABCD"',
        "l: must have at least 1 item, got 0",
        'ip: invalid IP address "10.0.0.300": write an address such as 10.0.9.1',
        'net: invalid CIDR "10.0.0.1/24": host bits are set; did you mean 10.0.0.0/24?',
        '["odd key"]: must be a string, got integer 1; put it in quotes to keep it as text',
    ]


# --- semantic checks ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("node.labels.zone==a", ("node.labels.zone", "==", "a")),
    ("node.role != manager", ("node.role", "!=", "manager")),
    ("Node.Hostname==Box-1", ("node.hostname", "==", "Box-1")),
    ("engine.labels.Disk==ssd", ("engine.labels.Disk", "==", "ssd")),
    ("node.ip==10.0.0.0/24", ("node.ip", "==", "10.0.0.0/24")),
])
def test_parse_constraint(text: str, expected: tuple[str, str, str]) -> None:
    assert validation.parse_constraint(text) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("node.role=manager", "write <key>==<value> or <key>!=<value>"),
    ("nod.role==manager", 'did you mean "node.role"?'),
    ("node.labels.==a", "missing the label name after node.labels."),
    ("node.role==", "missing value after =="),
    ("color==red", "keys are node.id, node.hostname, node.ip, node.role"),
])
def test_parse_constraint_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid constraint") as err:
        validation.parse_constraint(text)
    assert fragment in str(err.value)


def test_parse_spread() -> None:
    assert validation.parse_spread("node.labels.zone") == ("node.labels", "zone")
    assert validation.parse_spread("engine.labels.rack") == ("engine.labels", "rack")
    with pytest.raises(ValueError, match=r"node\.labels\.<key> or engine\.labels\.<key>"):
        validation.parse_spread("zone")


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
        'spec.placement.preferences[0].spread: invalid spread preference "zone": write '
        "node.labels.<key> or engine.labels.<key>",
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
    validation.admit(doc, registry)


def test_service_name_is_a_dns_label(registry: kinds.Registry) -> None:
    doc = service()
    doc["metadata"]["name"] = "web.v2"
    [message] = errors_of(doc, registry)
    assert message.startswith('metadata.name: "web.v2" is not a valid name')
    assert message.endswith("(a service name is a DNS label)")


def test_semantic_checks_survive_wrong_types(registry: kinds.Registry) -> None:
    doc = service(placement={"constraints": "node.role==manager", "preferences": [5]},
                  endpoint={"ports": {"a": 1}})
    doc["spec"]["template"].update(mounts="x", healthcheck=[], resources={"limits": 5})
    assert len(errors_of(doc, registry)) == 6


def test_secret_data(registry: kinds.Registry) -> None:
    good: dict[str, Any] = {
        "apiVersion": "shoal.io/v1", "kind": "Secret", "metadata": {"name": "key"},
        "spec": {"data": base64.b64encode(b"\x00\x01secret").decode()}}
    validation.admit(good, registry)
    wrapped = copy.deepcopy(good)
    wrapped["spec"]["data"] = base64.encodebytes(b"x" * 100).decode()  # has line breaks
    validation.admit(wrapped, registry)
    bad = copy.deepcopy(good)
    bad["spec"]["data"] = "not base64!"
    assert errors_of(bad, registry) == [
        'spec.data: "not base64!" is not valid base64: encode the bytes with `base64 -w0 FILE`']
    big = copy.deepcopy(good)
    big["spec"]["data"] = base64.b64encode(b"x" * (500 * 1024 + 1)).decode()
    assert errors_of(big, registry) == [
        "spec.data: is 512001 bytes decoded; a secret holds at most 512000 bytes (500 KiB)"]
    assert validation.decode_base64("aGVs\nbG8=\n") == b"hello"


def test_network_semantics(registry: kinds.Registry) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Network", "metadata": {"name": "front"},
           "spec": {"subnet": "10.0.9.0/24", "gateway": "10.0.10.1", "ingress": True,
                    "attachable": True}}
    assert errors_of(doc, registry) == [
        "spec.attachable: an ingress network cannot be attachable",
        "spec.gateway: 10.0.10.1 is not inside subnet 10.0.9.0/24"]


def test_task_keeps_unknown_fields(registry: kinds.Registry) -> None:
    doc: dict[str, Any] = {
        "apiVersion": "shoal.io/v1", "kind": "Task", "metadata": {"name": "web.1.abc"},
        "spec": {"serviceName": "web", "slot": 1, "template": {"image": "x", "new": 1},
                 "restartAt": "later"},
        "status": {"state": "running", "containerId": "c1", "extra": [1]}}
    task = validation.admit(doc, registry)
    assert task.spec["desiredState"] == "running" and task.status["extra"] == [1]
    doc["status"]["state"] = "exploded"
    [message] = errors_of(doc, registry)
    assert message.startswith("status.state: must be one of new, pending, assigned, ")


# --- user-defined kinds -------------------------------------------------------------------

WEBSITE_CRD = """
apiVersion: apiextensions.k8s.io/v1     # a Kubernetes CRD file applies unchanged
kind: CustomResourceDefinition
metadata:
  name: websites.example.com
  annotations: {controller-gen.kubebuilder.io/version: v0.14.0}
spec:
  group: example.com
  names: {kind: Website, plural: websites, singular: website, shortNames: [ws]}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [domain]
              properties:
                domain: {type: string, pattern: '^[a-z0-9.-]+$'}
                replicas: {type: integer, minimum: 1, default: 2}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""


@pytest.fixture
def with_website(registry: kinds.Registry) -> kinds.Registry:
    crd = validation.admit(yaml.safe_load(WEBSITE_CRD), registry, "file crd.yaml")
    assert crd.apiVersion == "shoal.io/v1" and crd.namespace is None
    registry.add(kinds.kind_info_from_crd(crd.to_dict()))
    return registry


def test_user_kind_good_object(with_website: kinds.Registry) -> None:
    obj = validation.admit({"apiVersion": "example.com/v1", "kind": "Website",
                            "metadata": {"name": "blog"}, "spec": {"domain": "blog.example"},
                            "status": {"ready": True}}, with_website)
    assert obj.spec == {"domain": "blog.example", "replicas": 2}
    assert obj.apiVersion == "example.com/v1" and obj.namespace == "default"


def test_user_kind_bad_object(with_website: kinds.Registry) -> None:
    doc = {"apiVersion": "shoal.io/v1", "kind": "Website", "metadata": {"name": "blog"},
           "spec": {"domain": "Blog!", "replicas": 0, "replica": 1}}
    assert errors_of(doc, with_website, "file site.yaml, document 1") == [
        'apiVersion: must be example.com/v1 for kind Website, got string "shoal.io/v1"; '
        "write apiVersion: example.com/v1",
        'spec.domain: must match the pattern "^[a-z0-9.-]+$", got "Blog!"',
        "spec.replicas: must be >= 1, got 0",
        'spec.replica: unknown field "replica"; did you mean "replicas"?',
    ]
    doc["spec"] = {}
    doc["apiVersion"] = "example.com/v1"
    with pytest.raises(ValidationError) as err:
        validation.admit(doc, with_website, "file site.yaml, document 1")
    assert str(err.value) == ("spec.domain: required field missing "
                              "(websites/blog, file site.yaml, document 1)")


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


def test_crd_cannot_take_builtin_names(registry: kinds.Registry) -> None:
    doc = yaml.safe_load(WEBSITE_CRD)
    doc["spec"]["names"]["shortNames"] = ["svc"]
    [message] = errors_of(doc, registry)
    assert message.startswith('spec.names: name "svc" of kind Website is already used by kind '
                              "Service")


def test_lone_version_is_stored_unless_it_says_otherwise(registry: kinds.Registry) -> None:
    doc = yaml.safe_load(WEBSITE_CRD)
    del doc["spec"]["versions"][0]["storage"]
    validation.admit(doc, registry)
    doc["spec"]["versions"][0]["storage"] = False
    assert errors_of(doc, registry) == [
        "spec.versions: exactly one version must have storage: true, got 0"]
