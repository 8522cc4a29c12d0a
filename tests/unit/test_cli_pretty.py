"""shoal/cli/pretty.py: human units and the tasks attached, without etcd."""

from __future__ import annotations

import datetime

from shoal.cli import pretty
from shoal.crds import resource


def test_human_units() -> None:
    assert pretty.human_bytes(8 * 2**30) == "8GiB"
    assert pretty.human_bytes(8_200_000_000) == "7.637GiB"
    assert pretty.human_bytes(512 * 2**20) == "512MiB"
    assert pretty.human_bytes(None) == "<none>"
    assert pretty.human_cpus(4.0) == "4" and pretty.human_cpus(0.5) == "0.5"
    now = datetime.datetime(2024, 5, 1, 12, 3, 23, tzinfo=datetime.UTC)
    assert pretty.human_date("2024-05-01T12:00:03Z", now) == (
        "2024-05-01 12:00:03 +0000 UTC (3m20s ago)")


def test_node_text_lists_live_tasks_only() -> None:
    node = resource.new("Node", "n1", None, {"availability": "drain"}, labels={"zone": "a"})
    node.status = {"state": "ready", "resources": {"cpus": 2, "memory": 2**30},
                   "runtime": "process"}
    live = resource.new("Task", "web.1.a", "default", {"serviceName": "web", "nodeName": "n1"})
    live.status = {"state": "running"}
    ended = resource.new("Task", "web.1.b", "default", {"serviceName": "web", "nodeName": "n1"})
    ended.status = {"state": "shutdown"}
    text = pretty.node_text(node, [live, ended], local=True)
    assert "n1 (this host)" in text and "Drain" in text and "1GiB" in text
    assert "default/web.1.a" in text and "web.1.b" not in text and "Tasks: 1" in text


def test_service_text_shows_rebalancing_when_enabled() -> None:
    svc = resource.new("Service", "web", "default")
    svc.spec = {"replicas": 6, "template": {"image": "busybox"},
                "placement": {"rebalance": {"enabled": True, "maxSkew": 2,
                                            "maxMovesPerMinute": 6}}}
    text = pretty.service_text(svc)
    assert "Placement:" in text
    assert " Rebalance:" in text and "maxSkew 2, 6 moves a minute" in text
    svc.spec["placement"]["rebalance"]["enabled"] = False
    assert "Rebalance" not in pretty.service_text(svc)


def test_service_text_shows_each_network_with_its_aliases() -> None:
    svc = resource.new("Service", "web", "default")
    svc.spec = {"template": {"image": "busybox"},
                "networks": ["front", {"name": "back", "aliases": ["db", "store"]}]}
    assert "front back (aliases: db, store)" in pretty.service_text(svc)


def test_service_text_shows_update_status_and_schema_defaults() -> None:
    svc = resource.new("Service", "web", "default",
                       {"replicas": 2, "template": {"image": "nginx:2"},
                        "updateConfig": {"parallelism": 2}})
    svc.status = {"update": {"state": "updating", "message": "update in progress",
                             "startedAt": "2024-05-01T12:00:03Z", "generation": 2}}
    now = datetime.datetime(2024, 5, 1, 12, 0, 13, tzinfo=datetime.UTC)
    lines = pretty.service_text(svc, now).splitlines()
    at = lines.index("UpdateStatus:")
    assert lines[at - 1].split() == ["Replicas:", "2"]  # docker's place: after the mode
    assert [line.split(":", 1)[0] for line in lines[at + 1:at + 4]] == [
        " State", " Started", " Message"]
    assert lines[at + 2].split(":", 1)[1].strip() == "10s ago"
    # Fields the stored config lacks read as the schema's defaults.
    update = lines.index("UpdateConfig:")
    assert lines[update + 1].split() == ["Parallelism:", "2"]
    assert lines[update + 2].split() == ["On", "failure:", "pause"]
    assert "UpdateStatus:" not in pretty.service_text(resource.new(
        "Service", "api", "default", {"template": {"image": "x"}}))


def test_service_text_lists_its_files_as_docker_does() -> None:
    svc = resource.new("Service", "web", "default", {"template": {
        "image": "nginx", "configs": [{"source": "site", "target": "/etc/site.conf"}],
        "secrets": [{"source": "db", "target": "pw", "uid": "70", "gid": "70",
                     "mode": 0o400}]}})
    lines = pretty.service_text(svc).splitlines()
    at = lines.index(" Configs:")
    assert [line.split() for line in lines[at:at + 7]] == [
        ["Configs:"], ["Target:", "/etc/site.conf"], ["Source:", "site"],
        ["Secrets:"], ["Target:", "pw"], ["Source:", "db"], ["Owner:", "70:70", "mode", "0400"]]
