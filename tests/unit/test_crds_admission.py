"""crds.admission: the envelope, Swarm defaults through admit, stored objects, user CRDs."""

from __future__ import annotations

import pytest
import yaml

from shoal.crds import admission, kinds, resource
from shoal.crds.admission import ValidationError
from shoal.crds.fielderrors import FieldError
from tests.unit.crds_support import SOURCE, WEBSITE_CRD, errors_of, service


@pytest.fixture
def registry() -> kinds.Registry:
    return kinds.Registry.builtin()


# --- error formatting -------------------------------------------------------------------


def test_error_message_format_is_exact(registry: kinds.Registry) -> None:
    with pytest.raises(ValidationError) as err:
        admission.admit(service(replicas=-1), registry, SOURCE)
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
        admission.admit(doc, registry)
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
    obj = admission.admit(doc, registry)
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
    spec = admission.admit(doc, registry).spec
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
    assert admission.admit(doc, registry).spec["restartPolicy"]["condition"] == "any"


def test_cluster_kinds_default_their_spec(registry: kinds.Registry) -> None:
    node = admission.admit({"apiVersion": "shoal.io/v1", "kind": "Node",
                             "metadata": {"name": "n1"}}, registry)
    assert node.spec == {"availability": "active", "role": "worker"}
    assert node.namespace is None
    net = admission.admit({"apiVersion": "shoal.io/v1", "kind": "Network",
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
    svc, cfg = (admission.admit(d, registry) for d in yaml.safe_load_all(EXAMPLE))
    assert svc.spec["replicas"] == 3 and svc.metadata.labels == {"app": "web"}
    assert svc.spec["rollbackConfig"]["failureAction"] == "pause"
    assert cfg.spec == {"data": "hello"} and cfg.ref == "config/default/site"


def test_global_mode_with_max_replicas_per_node_is_fine(registry: kinds.Registry) -> None:
    admission.admit(service(mode="global", placement={"maxReplicasPerNode": 1}), registry)


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
    # Nodes keep DNS-1123 names (Docker's names for services & co: test_crds_names.py).
    doc = {"apiVersion": "shoal.io/v1", "kind": "Node", "metadata": {"name": name},
           "spec": {}}
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
    first = admission.admit(service(), registry)
    first.metadata.uid = "abc"
    first.metadata.resourceVersion = "42"
    first.metadata.generation = 1
    first.metadata.creationTimestamp = resource.now_rfc3339()
    first.metadata.finalizers = ["shoal.io/gc"]
    first.metadata.ownerReferences = [resource.owner_reference(first)]
    first.status = {"observedGeneration": 1, "anything": {"goes": True}}
    again = admission.admit(first.to_dict(), registry)
    assert again.to_dict() == first.to_dict()


# --- user-defined kinds -------------------------------------------------------------------


@pytest.fixture
def with_website(registry: kinds.Registry) -> kinds.Registry:
    crd = admission.admit(yaml.safe_load(WEBSITE_CRD), registry, "file crd.yaml")
    assert crd.apiVersion == "shoal.io/v1" and crd.namespace is None
    registry.add(kinds.kind_info_from_crd(crd.to_dict()))
    return registry


def test_user_kind_good_object(with_website: kinds.Registry) -> None:
    obj = admission.admit({"apiVersion": "example.com/v1", "kind": "Website",
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
        admission.admit(doc, with_website, "file site.yaml, document 1")
    assert str(err.value) == ("spec.domain: required field missing "
                              "(websites/blog, file site.yaml, document 1)")

def test_crd_cannot_take_builtin_names(registry: kinds.Registry) -> None:
    doc = yaml.safe_load(WEBSITE_CRD)
    doc["spec"]["names"]["shortNames"] = ["svc"]
    [message] = errors_of(doc, registry)
    assert message.startswith('spec.names: name "svc" of kind Website is already used by kind '
                              "Service")


def test_kind_that_is_not_a_string_is_not_repeated_in_every_message(
        registry: kinds.Registry) -> None:
    """Fuzzing found it: the object's ref in every message was ``str(kind).lower()``, so
    a kind holding a big nested value was printed, whole, after every problem."""
    doc = {"apiVersion": "shoal.io/v1", "kind": [{"x": [{"x": 1}]}] * 50,
           "metadata": {"name": "web"}, "spec": {}}
    with pytest.raises(admission.ValidationError) as err:
        admission.admit(doc, registry, "file a.yaml, document 1")
    text = str(err.value)
    assert text.startswith("kind: must be a string, got an array"), text
    assert "(web, file a.yaml, document 1)" in text and "'x'" not in text, text
