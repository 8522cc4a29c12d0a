"""Docker's flags and verbs where swctl has the verb (issue #12, item 5), through the real
``swctl`` and the real etcd: ``network create`` refusing what it cannot honour, ``network
inspect`` with the tasks attached, ``node ls`` (ID, ``*``, ``--filter``, ``-o wide``),
``node rm``, ``node inspect --pretty``, ``service ls``'s PORTS and the swctl way for
docker verbs. Node and allocator status is written by hand here, as agents and the
allocator would (tests/integration/test_cli_agent_runtime.py runs a real agent).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shoal.crds import kinds, resource
from shoal.store import client, errors, etcd_server
from tests.integration.cli_support import Swctl

REG = kinds.Registry.builtin()


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


async def add_node(store: client.Store, name: str, *, state: str = "ready",
                   hostname: str = "elsewhere", address: str = "192.0.2.9",
                   role: str = "worker", labels: dict[str, str] | None = None,
                   runtime: str = "docker") -> resource.Resource:
    """A Node as an agent registers it (status written by hand)."""
    node = resource.new("Node", name, None, {"role": role}, labels=labels)
    node.status = {"state": state, "hostname": hostname, "address": address,
                   "runtime": runtime, "platform": {"os": "linux", "architecture": "x86_64"},
                   "resources": {"cpus": 4, "memory": 8 * 2**30}}
    info = REG.lookup("nodes")
    await store.create(info, node)
    return await store.get(info, name)


# --- network create / inspect ---

def test_network_create_refuses_what_it_cannot_honour(swctl: Swctl) -> None:
    # `swctl network create -d bridge appnet`
    err = swctl("network", "create", "-d", "bridge", "appnet", expect=1).stderr
    assert err.splitlines() == [
        'error: driver "bridge" is not available: a Shoal network is a swarm-scoped overlay '
        "(drop -d, or pass -d overlay)",
        "error: network appnet was not created"]
    # `swctl network create --driver overlay --opt encrypted appnet`
    err = swctl("network", "create", "--driver", "overlay", "--opt", "encrypted", "appnet",
                expect=1).stderr
    assert err.startswith("error: --opt encrypted: Shoal does not encrypt overlay traffic "
                          "yet (")
    assert "VXLAN traffic is plain text" in err
    # `swctl network create -d overlay -o foo=bar appnet`
    err = swctl("network", "create", "-d", "overlay", "-o", "foo=bar", "appnet",
                expect=1).stderr
    assert ('error: --opt foo=bar: unknown option "foo" for the overlay driver (Shoal '
            "honours no driver options yet)") in err
    assert swctl("network", "ls", "-q").stdout.split() == []  # nothing was created
    # Docker's full line, with what Shoal honours: created.
    out = swctl("network", "create", "-d", "overlay", "--attachable", "--subnet",
                "10.0.9.0/24", "--gateway", "10.0.9.1", "--label", "env=prod", "appnet").stdout
    assert out == "network/appnet created\n"


async def test_network_inspect_shows_services_and_tasks_attached(
        swctl: Swctl, store: client.Store) -> None:
    swctl("network", "create", "--label", "env=prod", "appnet")
    info = REG.lookup("networks")
    net = await store.get(info, "appnet")
    net.status.update({"subnet": "10.0.9.0/24", "gateway": "10.0.9.1", "vni": 4100})
    await store.update(info, net)
    swctl.write("web.yaml", "apiVersion: shoal.io/v1\nkind: Service\nmetadata: {name: web}\n"
                "spec:\n  template: {image: busybox}\n  networks: [appnet]\n")
    swctl("apply", "-d", "-f", "web.yaml")
    svc_info = REG.lookup("services")
    web = await store.get(svc_info, "web", "default")
    web.status["endpoint"] = {"mode": "vip", "ports": [],
                              "virtualIPs": [{"network": "appnet", "address": "10.0.9.2"}]}
    await store.update(svc_info, web)
    task = resource.new("Task", "web.1.abc", "default", {
        "serviceName": "web", "nodeName": "n1", "template": {"image": "busybox"},
        "networks": [{"name": "appnet", "addresses": ["10.0.9.5/24"]}]})
    task.status = {"state": "running"}
    await store.create(REG.lookup("tasks"), task)

    # `swctl network inspect appnet`
    out = swctl("network", "inspect", "appnet").stdout.splitlines()
    assert out[0].split() == ["Name:", "appnet"]
    assert [line.split() for line in out if line.startswith((" Subnet", " Gateway", " VNI"))] \
        == [["Subnet:", "10.0.9.0/24"], ["Gateway:", "10.0.9.1"], ["VNI:", "4100"]]
    assert " - env=prod" in out
    assert out[out.index("Services: 1") + 2].split() == ["default/web", "10.0.9.2"]
    assert out[out.index("Tasks: 1") + 1].split() == ["TASK", "NODE", "STATE", "ADDRESS"]
    assert out[out.index("Tasks: 1") + 2].split() == [
        "default/web.1.abc", "n1", "running", "10.0.9.5/24"]
    created = next(line for line in out if line.startswith("Created:"))
    assert "+0000 UTC (" in created and created.endswith(" ago)")
    # The stored object is still there for scripts.
    assert "vni: 4100" in swctl("network", "inspect", "appnet", "-o", "yaml").stdout


# --- node ls / rm / inspect --pretty ---

async def test_node_ls_id_local_mark_filters_and_wide(swctl: Swctl, store: client.Store) -> None:
    here = await add_node(store, "here", hostname=socket.gethostname(), address="127.0.0.1",
                          role="manager", labels={"zone": "a"}, runtime="process")
    await add_node(store, "far", labels={"zone": "b"})
    await add_node(store, "gone", state="down", runtime="hollow")

    # `swctl node ls`
    lines = swctl("node", "ls").stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "AVAILABILITY", "ROLE", "ADDRESS",
                                "TASKS", "AGE"]
    rows = {line.split()[1 if " * " not in line else 2]: line.split() for line in lines[1:]}
    uid = (here.metadata.uid or "").replace("-", "")[:12]
    assert rows["here"][:3] == [uid, "*", "here"]  # this host's node, marked as docker does
    assert "*" not in rows["far"] and "*" not in rows["gone"]

    # `swctl node ls -o wide`: the runtime and labels of each node
    wide = swctl("node", "ls", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["RUNTIME", "LABELS", "AGE"]
    by_name = {line.split()[1]: line.split() for line in wide[1:] if " * " not in line}
    assert by_name["far"][-3:-1] == ["docker", "zone=b"]
    assert by_name["gone"][-3:-1] == ["hollow", "<none>"]
    assert next(line for line in wide if " * " in line).split()[-3:-1] == ["process", "zone=a"]

    # `swctl node ls --filter role=manager`, `-f node.label=zone=b`, `--filter name=o`, id=
    def names(*args: str) -> list[str]:
        return swctl("node", "ls", "-q", *args).stdout.split()
    assert names("--filter", "role=manager") == ["here"]
    assert names("-f", "node.label=zone=b") == ["far"]
    assert names("-f", "node.label=zone") == ["far", "here"]
    assert names("--filter", "name=o", "--filter", "role=worker") == ["gone"]
    assert names("--filter", f"id={uid[:6]}") == ["here"]
    assert names("--filter", "membership=accepted") == ["far", "gone", "here"]
    # `swctl node ls --filter colour=blue`
    err = swctl("node", "ls", "--filter", "colour=blue", expect=1).stderr
    assert err == ('error: invalid filter "colour=blue": node ls filters on name=, id=, '
                   "role=, label=, node.label=, membership= (e.g. --filter role=manager)\n")


async def test_node_rm_refuses_a_live_node_unless_forced(swctl: Swctl,
                                                         store: client.Store) -> None:
    await add_node(store, "live")
    await add_node(store, "dead", state="down")
    info = REG.lookup("nodes")
    # `swctl node rm live dead`: one refusal removes nothing
    err = swctl("node", "rm", "live", "dead", expect=1).stderr.splitlines()
    assert err == [
        "error: node live is ready, not down, and cannot be removed: stop its agent first "
        "(the node is down one heartbeat TTL later), drain it to move its tasks, or remove "
        "it anyway with `swctl node rm --force live`",
        "error: nothing was removed"]
    assert swctl("node", "ls", "-q").stdout.split() == ["dead", "live"]
    # `swctl node rm dead`
    assert swctl("node", "rm", "dead").stdout == "node/dead removed\n"
    with pytest.raises(errors.NotFoundError):
        await store.get(info, "dead")
    # `swctl node rm --force live`
    assert swctl("node", "rm", "--force", "live").stdout == "node/live removed\n"
    assert swctl("node", "ls", "-q").stdout.split() == []
    # `swctl node rm nope`
    assert 'node "nope" not found' in swctl("node", "rm", "nope", expect=1).stderr


async def test_node_inspect_pretty_in_human_units_with_tasks(swctl: Swctl,
                                                             store: client.Store) -> None:
    await add_node(store, "n1", labels={"zone": "a"})
    task = resource.new("Task", "web.1.abc", "default", {
        "serviceName": "web", "nodeName": "n1", "template": {"image": "busybox"},
        "networks": [{"name": "appnet", "addresses": ["10.0.9.5/24"]}]})
    task.status = {"state": "running"}
    await store.create(REG.lookup("tasks"), task)
    # `swctl node inspect --pretty n1`
    out = swctl("node", "inspect", "--pretty", "n1").stdout.splitlines()
    fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
              for line in out if ":" in line and not line.startswith("  ")}
    assert fields["Name"] == "n1"
    assert fields["State"] == "Ready" and fields["Availability"] == "Active"
    assert fields["CPUs"] == "4" and fields["Memory"] == "8GiB"
    assert fields["Runtime"] == "docker"
    assert fields["Joined at"].endswith(" ago)")
    assert " - zone=a" in out
    assert out[out.index("Tasks: 1") + 2].split() == [
        "default/web.1.abc", "web", "running", "appnet=10.0.9.5/24"]


# --- service ls ---

async def test_service_ls_has_a_ports_column(swctl: Swctl, store: client.Store) -> None:
    swctl.write("svc.yaml", """
        apiVersion: shoal.io/v1
        kind: Service
        metadata: {name: web}
        spec:
          template: {image: busybox}
          endpoint:
            ports: [{target: 80, published: 8080}, {target: 53, published: 5353, protocol: udp}]
        ---
        apiVersion: shoal.io/v1
        kind: Service
        metadata: {name: api}
        spec:
          template: {image: busybox}
          endpoint: {ports: [{target: 8000}]}
        ---
        apiVersion: shoal.io/v1
        kind: Service
        metadata: {name: quiet}
        spec: {template: {image: busybox}}
        """)
    swctl("apply", "-d", "-f", "svc.yaml")

    def ports() -> dict[str, str]:
        lines = swctl("service", "ls").stdout.splitlines()
        assert lines[0].split() == ["NAME", "MODE", "REPLICAS", "IMAGE", "PORTS", "AGE"]
        return {line.split()[0]: line.split()[4] if len(line.split()) == 6 else ""
                for line in lines[1:]}

    # `swctl service ls`
    assert ports() == {"web": "*:8080->80/tcp,*:5353->53/udp",
                       "api": "*:<pending>->8000/tcp", "quiet": ""}
    info = REG.lookup("services")
    api = await store.get(info, "api", "default")
    api.status["endpoint"] = {"mode": "vip", "virtualIPs": [], "ports": [
        {"protocol": "tcp", "target": 8000, "published": 30001, "mode": "ingress"}]}
    await store.update(info, api)
    assert ports()["api"] == "*:30001->8000/tcp"  # the port the allocator picked
    assert swctl("service", "ls", "-o", "name").stdout.split() == [
        "service/api", "service/quiet", "service/web"]


# --- docker's verbs ---

@pytest.mark.parametrize(("argv", "message"), [
    (["node", "ps", "n1"],
     'unknown command "node ps": use swctl node inspect --pretty n1 (see swctl node --help)'),
    (["stack", "frob", "app"],
     'unknown command "stack frob": swctl stack has convert, deploy, down, list, ls, ps, '
     "remove, rm, services, up (see swctl stack --help)"),
    (["node", "frob", "n1"],
     'unknown command "node frob": swctl node has activate, demote, drain, inspect, list, '
     "ls, pause, promote, remove, rm, update (see swctl node --help)"),
    (["service", "ps", "web", "--format", "{{.Name}}"],
     "unknown flag --format for swctl service ps (see swctl service ps --help)"),
    (["get", "services", "--format", "json"],
     "unknown flag --format for swctl get: use -o json|yaml|wide|name (see swctl get "
     "--help)"),
])
def test_docker_verbs_name_the_swctl_way(swctl: Swctl, argv: list[str], message: str) -> None:
    proc = swctl(*argv, expect=1)
    assert proc.stderr == f"error: {message}\n"
    assert proc.stdout == ""


def test_the_hinted_delete_works(swctl: Swctl) -> None:
    # The hint's command is one swctl runs: `swctl delete service/web`.
    swctl.write("web.yaml", "apiVersion: shoal.io/v1\nkind: Service\nmetadata: {name: web}\n"
                "spec:\n  template: {image: busybox}\n")
    swctl("apply", "-d", "-f", "web.yaml")
    assert swctl("delete", "service/web").stdout.startswith("service/web ")
    err = swctl("delete", "service/a", "network/b", expect=1).stderr
    assert err == ('error: cannot read "service/a network/b": give TYPE/NAME... of one kind '
                   "(service/web service/api) or TYPE NAME... (service web)\n")


def test_service_scale_is_still_a_verb(swctl: Swctl) -> None:
    # `swctl service scale web=3`: a docker verb swctl has, so no hint, the real answer.
    err = swctl("service", "scale", "web=3", expect=1).stderr
    assert 'services "web" not found' in err
