"""``swctl stack ...`` as a Swarm user drives it: deploy a compose file (Docker's progress
lines, then convergence), ``ls``/``services``/``ps``, deploy the same file again (nothing
written), change an image (only that service is updated, and rolled), ``--prune`` what
the file dropped, ``rm`` everything the stack made but not the external network it
named; a compose error and an invalid object refused with nothing written; ``convert``
printing the List and writing nothing; and two corpus files (the voting app, an ELK
stack with configs) deployed as they are, converged and removed.

Real etcd, a real ``swctl controller-manager`` and a real hollow agent with three manager
nodes (the voting app pins services to ``node.role == manager``), each a process.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.store import etcd_server
from tests.integration.cli_support import Cluster, Swctl, hollow_cluster

VERIFY = ("--verify-window", "0.3")
CORPUS = Path("/work/shared/corpus/stacks")

SHARED = "apiVersion: shoal.io/v1\nkind: Network\nmetadata: {name: shared}\n"

STACK = """\
version: "3.7"
services:
  web:
    image: shoal/busybox:{web_image}
    command: httpd -f -p 8080
    ports: ["18080:8080"]
    networks: [front, shared]
    deploy:
      replicas: 2
      update_config: {{parallelism: 2, order: start-first}}
{db}
networks:
  front: {{}}
  back: {{}}
  shared: {{external: true}}
configs:
  conf: {{file: ./app.conf}}
{secrets}
"""
DB = """\
  db:
    image: shoal/busybox:1.0
    command: sleep 1000
    ports: ["18081:8080"]
    networks: [back]
"""
CACHE = """\
  cache:
    image: shoal/busybox:1.0
    ports: ["18081:8080"]
    networks: [front]
"""
SECRETS = """\
secrets:
  token: {file: ./token.txt}
"""


def stack_file(web_image: str = "1.0", db: bool = True) -> str:
    return STACK.format(web_image=web_image, db=DB if db else CACHE,
                        secrets=SECRETS if db else "")


@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    swctl = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("stack"))
    with hollow_cluster(swctl, "--role", "manager", "--hollow-start-delay", "0.1") as c:
        yield c


def listing(swctl: Swctl, namespace: str) -> list[dict[str, Any]]:
    """The namespace's services, secrets, configs and tasks, and every network: one call."""
    out = swctl("get", "services,secrets,configs,networks,tasks", "-n", namespace, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def objects(swctl: Swctl, namespace: str,
            items: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """kind/name -> resourceVersion of what the stack made, and of its tasks."""
    out = {}
    for item in listing(swctl, namespace) if items is None else items:
        labels = item["metadata"].get("labels") or {}
        if item["kind"] == "Task" or labels.get("com.docker.stack.namespace") == namespace:
            out[f"{item['kind']}/{item['metadata']['name']}"] = item["metadata"][
                "resourceVersion"]
    return out


def running(swctl: Swctl, namespace: str, service: str) -> list[str]:
    """The images of the service's tasks desired and observed running."""
    items = json.loads(swctl("get", "tasks", "-n", namespace, "-o", "json").stdout)["items"]
    return sorted(t["spec"]["template"]["image"] for t in items
                  if t["spec"]["serviceName"] == service
                  and t["spec"]["desiredState"] == "running"
                  and t["status"].get("state") == "running")


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_deploy_redeploy_update_prune_and_rm(cluster: Cluster) -> None:
    swctl = cluster.swctl
    swctl.write("shared.yaml", SHARED)
    swctl("apply", "-d", "-f", "shared.yaml")
    swctl.write("app.conf", "listen 8080\n")
    swctl.write("token.txt", "s3cret\n")
    swctl.write("web.yml", stack_file())

    # swctl stack deploy -c web.yml web
    out = swctl("stack", "deploy", "-c", "web.yml", "web", *VERIFY, timeout=90).stdout
    lines = out.splitlines()
    assert lines[:6] == ["Creating network web_back", "Creating network web_front",
                         "Creating secret web_token", "Creating config web_conf",
                         "Creating service web_db", "Creating service web_web"]
    # Then each service's progress, as docker service create shows it.
    assert "web_db: verify: Service converged" in lines
    assert lines[-1] == "web_web: verify: Service converged"
    assert running(swctl, "web", "web_web") == ["shoal/busybox:1.0"] * 2

    assert ["web", "2", "Swarm"] in rows(swctl("stack", "ls").stdout)
    services = rows(swctl("stack", "services", "web").stdout)
    assert [r[:3] for r in services[1:]] == [["web_db", "replicated", "1/1"],
                                             ["web_web", "replicated", "2/2"]]
    assert "*:18080->8080/tcp" in services[2]
    tasks = rows(swctl("stack", "ps", "web").stdout)
    assert sorted(r[1] for r in tasks[1:]) == ["web_db.1", "web_web.1", "web_web.2"]
    assert all("Running" in r for r in tasks[1:])

    # The secret is sealed in etcd, as apply seals it: its size shows, its value does not.
    items = listing(swctl, "web")
    token = next(i for i in items if i["metadata"]["name"] == "web_token")
    assert token["spec"]["dataSize"] == len("s3cret\n") and "data" not in token["spec"]

    # The same file again writes nothing at all (the secret compared by digest).
    before = objects(swctl, "web", items)
    again = swctl("stack", "deploy", "-c", "web.yml", "web", *VERIFY, timeout=90).stdout
    assert again.splitlines() == ["Stack web is up to date: nothing to change"]
    assert objects(swctl, "web") == before

    # A new image for web: only web is updated, and rolled to the new image.
    swctl.write("web.yml", stack_file(web_image="2.0"))
    web = json.loads(swctl("get", "service", "web_web", "-n", "web", "-o", "json").stdout)
    updated = swctl("stack", "deploy", "-c", "web.yml", "web", *VERIFY, timeout=90).stdout
    lines = updated.splitlines()
    assert lines[0] == f"Updating service web_web (id: {web['metadata']['uid']})"
    assert not any(line.startswith(("Creating", "Updating")) for line in lines[1:])
    assert lines[-1] == "verify: Service converged"  # one service: no name before it
    assert running(swctl, "web", "web_web") == ["shoal/busybox:2.0"] * 2

    # --prune: db, its network and the secret are gone from the file, so from the stack;
    # the port db published is free for the new cache.
    swctl.write("web.yml", stack_file(web_image="2.0", db=False))
    pruned = swctl("stack", "deploy", "--prune", "-c", "web.yml", "web", *VERIFY,
                   timeout=90).stdout.splitlines()
    assert pruned[:4] == ["Removing service web_db", "Creating service web_cache",
                          "Removing secret web_token", "Removing network web_back"]
    assert pruned[-1] == "verify: Service converged"
    assert sorted(k for k in objects(swctl, "web") if not k.startswith("Task/")) == [
        "Config/web_conf", "Network/web_front", "Service/web_cache", "Service/web_web"]

    # swctl stack rm web: everything it made, and only that.
    removed = swctl("stack", "rm", "web", timeout=90).stdout
    assert removed.splitlines() == ["Removing service web_cache", "Removing service web_web",
                                    "Removing config web_conf", "Removing network web_front"]
    left = listing(swctl, "web")
    assert objects(swctl, "web", left) == {}
    assert "shared" in [i["metadata"]["name"] for i in left]  # external: not the stack's
    assert rows(swctl("stack", "ls").stdout) == [["NAME", "SERVICES", "ORCHESTRATOR"]]
    gone = swctl("stack", "rm", "web")
    assert gone.stdout == "" and gone.stderr == "Nothing found in stack: web\n"


def test_refusals_write_nothing_and_convert_only_prints(cluster: Cluster) -> None:
    swctl = cluster.swctl
    swctl.write("app.conf", "listen 8080\n")
    swctl.write("token.txt", "s3cret\n")
    # A value Docker refuses: the file, the service and the key.
    swctl.write("bad.yml", stack_file().replace("replicas: 2", "replicas: two"))
    err = swctl("stack", "deploy", "-c", "bad.yml", "bad", expect=1).stderr
    assert err.startswith("error: bad.yml: services.web.deploy.replicas: ")
    assert err.endswith("error: nothing was written: fix the compose file and deploy again\n")
    # A file Docker takes but Shoal's admission refuses: the object and the files.
    swctl.write("bad.yml", stack_file().replace("replicas: 2", "replicas: 2\n"
                                                "      placement: {constraints: [bogus]}"))
    err = swctl("stack", "deploy", "-c", "bad.yml", "bad", expect=1).stderr
    assert "spec.placement.constraints[0]" in err and "service web from bad.yml)" in err
    assert objects(swctl, "bad") == {}

    # convert: the objects as a List, for every -c file merged, and nothing written.
    swctl.write("override.yml", 'version: "3.7"\nservices:\n  web:\n    deploy:\n'
                "      replicas: 5\n")
    swctl.write("good.yml", stack_file())
    printed = swctl("stack", "convert", "-c", "good.yml", "-c", "override.yml", "conv",
                    "-o", "json").stdout
    listing: dict[str, Any] = json.loads(printed)
    assert listing["kind"] == "List"
    assert [(i["kind"], i["metadata"]["name"]) for i in listing["items"]] == [
        ("Network", "conv_back"), ("Network", "conv_front"), ("Secret", "conv_token"),
        ("Config", "conv_conf"), ("Service", "conv_db"), ("Service", "conv_web")]
    assert listing["items"][-1]["spec"]["replicas"] == 5
    assert objects(swctl, "conv") == {}


@pytest.mark.parametrize(("stem", "stack", "replicas"), [
    ("001-dockersamples__example-voting-app", "vote",
     {"db": "1/1", "redis": "1/1", "result": "1/1", "visualizer": "1/1", "vote": "2/2",
      "worker": "1/1"}),
    # configs from files, mounted into the tasks
    ("003-deviantony__docker-elk", "elk",
     {"elasticsearch": "1/1", "kibana": "1/1", "logstash": "1/1"}),
])
def test_corpus_stacks_deploy_converge_and_go(cluster: Cluster, stem: str, stack: str,
                                              replicas: dict[str, str]) -> None:
    swctl = cluster.swctl
    path = swctl.cwd / stack / "docker-stack.yml"
    path.parent.mkdir()
    shutil.copy(CORPUS / f"{stem}.yml", path)
    # Each file a config or secret names gets a dummy, as the corpus was made.
    for section in ("configs", "secrets"):
        for body in (yaml.safe_load(path.read_text()).get(section) or {}).values():
            if body and body.get("file"):
                dummy = path.parent / body["file"]
                dummy.parent.mkdir(parents=True, exist_ok=True)
                dummy.write_text("dummy\n")
    out = swctl("stack", "deploy", "-c", str(path), stack, *VERIFY, timeout=120).stdout
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("Creating service")] == [
        f"Creating service {stack}_{s}" for s in replicas]
    assert lines[-1].endswith(": verify: Service converged")
    listed = rows(swctl("stack", "services", stack).stdout)[1:]
    assert {r[0]: r[2] for r in listed} == {f"{stack}_{s}": n for s, n in replicas.items()}
    swctl("stack", "rm", stack, timeout=90)
    assert objects(swctl, stack) == {}
