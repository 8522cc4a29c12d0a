"""``swctl get``: every output format, selectors, namespaces, kind names and ``-w``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shoal.store import etcd_server
from tests.integration.cli_support import Swctl, service


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


@pytest.fixture
def three_services(swctl: Swctl) -> Swctl:
    """web (front, 3 replicas) and api (back) in default; db (back) in namespace data."""
    path = swctl.write("stack.yaml", "---\n".join([
        service("web", 3, "front"), service("api", 1, "back"),
        service("db", 1, "back").replace("name: db", "name: db\n  namespace: data")]))
    swctl("apply", "-d", "-f", str(path))
    return swctl


def test_table_and_wide(three_services: Swctl) -> None:
    swctl = three_services
    lines = swctl("get", "services").stdout.splitlines()
    assert lines[0].split() == ["NAME", "MODE", "REPLICAS", "IMAGE", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["api", "web"]
    assert rows["web"][1:4] == ["replicated", "0/3", "shoal/busybox"]  # no tasks yet
    # Columns are aligned: every row starts its second column where the header does.
    col = lines[0].index("MODE")
    assert all(line[col - 3:col] == "   " and line[col] != " " for line in lines[1:])
    # Short name and singular name select the same kind; -o wide keeps the columns.
    def without_age(text: str) -> list[list[str]]:
        return [line.split()[:-1] for line in text.splitlines()]

    assert without_age(swctl("get", "svc").stdout) == without_age(
        swctl("get", "service").stdout)
    assert swctl("get", "svc", "-o", "wide").stdout.splitlines()[0].split()[0] == "NAME"


def test_json_yaml_and_name(three_services: Swctl) -> None:
    swctl = three_services
    listed = json.loads(swctl("get", "svc", "-o", "json").stdout)
    assert listed["apiVersion"] == "shoal.io/v1" and listed["kind"] == "List"
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["api", "web"]
    one = json.loads(swctl("get", "svc", "web", "-o", "json").stdout)
    assert one["kind"] == "Service" and one["spec"]["replicas"] == 3
    assert one["metadata"]["uid"] and one["metadata"]["resourceVersion"]
    as_yaml = yaml.safe_load(swctl("get", "svc", "web", "-o", "yaml").stdout)
    assert as_yaml == one
    yaml_list = yaml.safe_load(swctl("get", "svc", "-o", "yaml").stdout)
    assert yaml_list["kind"] == "List" and len(yaml_list["items"]) == 2
    assert swctl("get", "svc", "-o", "name").stdout.split() == ["service/api", "service/web"]
    # An empty list is still a List in json, and nothing at all in the table format.
    empty = json.loads(swctl("get", "networks", "-o", "json").stdout)
    assert empty == {"apiVersion": "shoal.io/v1", "kind": "List", "items": []}
    none = swctl("get", "net")
    assert none.stdout == "" and "No resources found" in none.stderr


def test_selector_and_all_namespaces(three_services: Swctl) -> None:
    swctl = three_services
    assert swctl("get", "svc", "-l", "tier=back", "-o", "name").stdout.split() == [
        "service/api"]
    assert swctl("get", "svc", "-l", "tier in (front,back),app!=api", "-o",
                 "name").stdout.split() == ["service/web"]
    lines = swctl("get", "svc", "-A", "-l", "tier=back").stdout.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert sorted(tuple(line.split()[:2]) for line in lines[1:]) == [
        ("data", "db"), ("default", "api")]
    assert swctl("get", "svc", "db", "-n", "data", "-o", "name").stdout == "service/db\n"
    # Several kinds at once (`all` is services and tasks) qualify NAME with the kind.
    lines = swctl("get", "all,configs", "-n", "data").stdout.splitlines()
    assert lines[0].split()[0] == "NAME" and lines[1].split()[0] == "service/db"
    bad = swctl("get", "svc", "-l", "tier==(", expect=1).stderr
    assert bad.startswith("error: invalid label selector")


def test_missing_object(three_services: Swctl) -> None:
    err = three_services("get", "svc", "nope", expect=1).stderr
    assert err.startswith('error: services "nope" not found in namespace "default"')


def test_watch_prints_changes_until_interrupted(three_services: Swctl) -> None:
    swctl = three_services
    watcher = swctl.start("get", "svc", "web", "-w")
    try:
        assert watcher.read_line().split()[:3] == ["NAME", "MODE", "REPLICAS"]
        assert watcher.read_line().split()[:3] == ["web", "replicated", "0/3"]
        path = swctl.write("scale.yaml", service("web", 7, "front"))
        swctl("apply", "-d", "-f", str(path))
        assert watcher.read_line().split()[:3] == ["web", "replicated", "0/7"]
        code, err = watcher.interrupt()
        assert code == 0 and err == ""
    finally:
        watcher.kill()
