"""``swctl apply`` checks what a Service names, as Swarm does: a missing network, secret
or config, or a network whose subnet overlaps another's, refuses the whole apply and
writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.store import etcd_server
from tests.helpers import eventually
from tests.integration.cli_support import Swctl
from tests.integration.orchestration_support import Cluster

WEB = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {name: web}
spec:
  replicas: 2
  networks: [nginx_network]
  template: {image: shoal/busybox, command: [httpd, -f, -p, "8080"]}
"""
NETWORK = """\
apiVersion: shoal.io/v1
kind: Network
metadata: {name: nginx_network}
"""


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def test_service_naming_a_missing_network_is_refused_and_nothing_written(
        swctl: Swctl) -> None:
    path = swctl.write("web.yaml", WEB)
    # swctl apply -f web.yaml
    refused = swctl("apply", "-f", "web.yaml", expect=1)
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        'error: spec.networks[0]: network "nginx_network" not found (services/default/web, '
        f"file {path.name}, document 1); create it first (swctl network create "
        "nginx_network) or add the Network to the files you apply",
        "error: nothing was written: fix the problem above and apply again"]
    # swctl get services
    listed = swctl("get", "services")
    assert listed.stdout == ""
    assert "No resources found" in listed.stderr
    # --dry-run refuses the same way.
    assert "not found" in swctl("apply", "--dry-run", "-f", "web.yaml", expect=1).stderr


def test_the_network_in_the_same_file_or_created_first_satisfies_it(swctl: Swctl) -> None:
    web = WEB
    swctl.write("stack.yaml", web + "---\n" + NETWORK)
    # swctl apply -d -f stack.yaml
    applied = swctl("apply", "-d", "-f", "stack.yaml")
    assert applied.stdout.splitlines() == ["service/web created",
                                           "network/nginx_network created"]
    swctl.write("api.yaml", web.replace("name: web", "name: api"))
    assert swctl("apply", "-d", "-f", "api.yaml").stdout == "service/api created\n"
    assert swctl("get", "services", "-o", "name").stdout.split() == ["service/api",
                                                                     "service/web"]


def test_overlapping_subnet_is_refused_naming_both(swctl: Swctl) -> None:
    # swctl network create appnet --subnet 10.0.9.0/24
    swctl("network", "create", "appnet", "--subnet", "10.0.9.0/24")
    path = swctl.write("b.yaml", """\
        apiVersion: shoal.io/v1
        kind: Network
        metadata: {name: b}
        spec: {subnet: 10.0.9.128/25}
        """)
    refused = swctl("apply", "-f", "b.yaml", expect=1)
    assert refused.stderr.splitlines()[0] == (
        "error: spec.subnet: subnet 10.0.9.128/25 of network 'b' overlaps 10.0.9.0/24 of "
        f"network 'appnet' (networks/b, file {path.name}, document 1); pick a subnet no "
        "other network uses (swctl network ls lists them), or leave spec.subnet out to get "
        "a free one")
    assert swctl("network", "ls", "-q").stdout.split() == ["appnet"]
    # A free subnet goes through.
    path.write_text(path.read_text().replace("10.0.9.128/25", "10.0.10.0/24"))
    assert swctl("apply", "-d", "-f", "b.yaml").stdout == "network/b created\n"


def test_a_missing_secret_or_config_says_not_found(swctl: Swctl) -> None:
    svc = WEB.replace("  networks: [nginx_network]\n", "").replace(
        'command: [httpd, -f, -p, "8080"]}',
        'command: [httpd, -f, -p, "8080"], secrets: [{source: db_pass}]}')
    path = swctl.write("web.yaml", svc)
    missing = swctl("apply", "-f", "web.yaml", expect=1).stderr.splitlines()
    assert missing[0] == (
        'error: spec.template.secrets[0].source: secret "db_pass" not found in namespace '
        f'"default" (services/default/web, file {path.name}, document 1); apply a Secret '
        "named db_pass in namespace default first, or add it to the files you apply")
    swctl.write("secret.yaml", """\
        apiVersion: shoal.io/v1
        kind: Secret
        metadata: {name: db_pass}
        spec: {data: aHVudGVyMg==}
        """)
    # swctl apply -d -f web.yaml -f secret.yaml: named in the same apply, it exists
    assert swctl("apply", "-d", "-f", "web.yaml", "-f", "secret.yaml").stdout == (
        "service/web created\nsecret/db_pass created\n")
    # Configs likewise: missing, then given.
    path.write_text(svc.replace("secrets: [{source: db_pass}]", "configs: [{source: site}]"))
    assert 'config "site" not found' in swctl("apply", "-f", "web.yaml", expect=1).stderr
    swctl.write("config.yaml", "apiVersion: shoal.io/v1\nkind: Config\n"
                               "metadata: {name: site}\nspec: {data: hello}\n")
    assert swctl("apply", "-d", "-f", "web.yaml", "-f", "config.yaml").stdout == (
        "service/web configured\nconfig/site created\n")


async def test_a_later_conflict_shows_in_the_error_columns(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    """What admission cannot know — the network deleted after the service was stored —
    is the allocator's to say, and `service ps` / `get -o wide` show it."""
    swctl = Swctl(etcd.url, prefix, tmp_path)
    async with Cluster.open(etcd.url, prefix, tmp_path) as cluster:
        cluster.start_manager()
        cluster.start_agent("n")
        await cluster.wait_ready(["n"])
        swctl("network", "create", "appnet")
        swctl.write("web.yaml", WEB.replace("nginx_network", "appnet").replace(
            "replicas: 2", "replicas: 1"))
        swctl("apply", "-f", "web.yaml", "--verify-window", "0.3")
        # swctl delete network appnet   (delete does not check; network rm would refuse)
        swctl("delete", "network", "appnet")
        # swctl scale web=2
        swctl("scale", "web=2", "-d")

        async def error_shown() -> list[str]:
            rows = swctl("service", "ps", "web").stdout.splitlines()
            return [r for r in rows if '"network appnet not found"' in r]
        rows = await eventually(error_shown, 20, what="the ERROR column of service ps")
        assert rows[0].split()[1] == "web.2"
        # swctl get tasks -o wide: the ERROR column says it too.
        tasks = swctl("get", "tasks", "-o", "wide").stdout.splitlines()
        assert tasks[0].split()[-2:] == ["ERROR", "AGE"]
        assert any(line.startswith("web.2.") and "network appnet not found" in line
                   for line in tasks)
        # swctl get services -o wide: the service's Allocated condition.
        services = swctl("get", "services", "-o", "wide").stdout.splitlines()
        assert "ERROR" in services[0].split()
        assert "network appnet not found" in services[1]
        # The network comes back: the task is allocated and runs; the error is gone.
        swctl("network", "create", "appnet")
        await cluster.wait_running("web", 2)

        async def cleared() -> bool:
            return "not found" not in swctl("service", "ps", "web").stdout
        await eventually(cleared, 20, what="the error gone from service ps")
