"""``swctl secret`` and ``swctl config``: create, ls, inspect, update, rm (refused while a
service mounts it) and ``secret rotate-key``, against a real etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shoal.crds import kinds, resource, sealed
from shoal.store import client, etcd_server
from tests.integration.cli_support import Swctl

SECRETS = kinds.Registry.builtin().lookup("secrets")
SERVICES = kinds.Registry.builtin().lookup("services")


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def shown_value(swctl: Swctl, name: str) -> str:
    out = swctl("get", "secret", name, "-o", "yaml", "--show-values").stdout
    return str(yaml.safe_load(out)["spec"]["data"])


async def test_create_ls_inspect_update(swctl: Swctl) -> None:
    # swctl secret create db_pass - --label app=db   (the value from stdin)
    assert swctl("secret", "create", "db_pass", "-", "--label", "app=db",
                 input="hunter2").stdout == "secret/db_pass created\n"
    again = swctl("secret", "create", "db_pass", "-", input="x", expect=1).stderr
    assert 'secret "db_pass" already exists' in again and "secret update db_pass" in again
    ring = sealed.load(swctl.keyring)
    # swctl secret ls
    table = swctl("secret", "ls").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "DIGEST", "CREATED", "UPDATED"]
    assert table[1].split()[1:3] == ["db_pass", ring.digest(b"hunter2")[:24]]
    whole = swctl("secret", "ls", "--no-trunc").stdout
    assert ring.digest(b"hunter2") in whole
    # swctl secret inspect db_pass: JSON without the value
    inspected = swctl("secret", "inspect", "db_pass").stdout
    assert "hunter2" not in inspected and "aHVudGVyMg" not in inspected
    assert json.loads(inspected)[0]["spec"] == {"dataSize": 7,
                                                "dataDigest": ring.digest(b"hunter2")}
    pretty = swctl("secret", "inspect", "--pretty", "db_pass").stdout
    assert "Name:            db_pass" in pretty and " - app=db" in pretty
    assert "hunter2" not in pretty
    # swctl secret update db_pass FILE: a new value; the same value again changes nothing
    swctl.write("new.txt", "s3cr3t")
    assert swctl("secret", "update", "db_pass", "new.txt").stdout == (
        "secret/db_pass configured\n")
    assert swctl("secret", "update", "db_pass", "new.txt").stdout == (
        "secret/db_pass unchanged\n")
    assert shown_value(swctl, "db_pass") == "czNjcjN0"  # base64 of s3cr3t
    missing = swctl("secret", "update", "nope", "new.txt", expect=1).stderr
    assert "secret create nope FILE" in missing
    # Configs: text, shown by inspect --pretty as docker does; binary data refused.
    swctl.write("site.conf", "listen 80;\n")
    swctl("config", "create", "site", "site.conf", "-n", "web")
    assert "Data:\nlisten 80;" in swctl("config", "inspect", "--pretty", "site",
                                        "-n", "web").stdout
    (swctl.cwd / "blob").write_bytes(b"\xff\xfe")
    assert "not UTF-8 text" in swctl("config", "create", "b", "blob", expect=1).stderr
    assert swctl("config", "ls", "-q", "-n", "web").stdout == "site\n"


async def test_rm_is_refused_while_a_service_mounts_it(swctl: Swctl,
                                                       store: client.Store) -> None:
    swctl("secret", "create", "db_pass", "-", input="hunter2")
    swctl("secret", "create", "unused", "-", input="x")
    await store.create(SERVICES, resource.new("Service", "api", "default", {
        "template": {"image": "x", "secrets": [{"source": "db_pass"}]}}))
    refused = swctl("secret", "rm", "unused", "db_pass", expect=1).stderr
    assert ("secret 'db_pass' is in use by the following service: api" in refused
            and "nothing was removed" in refused)
    assert swctl("secret", "ls", "-q").stdout == "db_pass\nunused\n"
    assert swctl("secret", "rm", "unused").stdout == "unused\n"
    assert 'secret "gone" not found' in swctl("secret", "rm", "gone", expect=1).stderr


async def test_rotate_key_reseals_everything_and_keeps_digests(
        swctl: Swctl, store: client.Store) -> None:
    swctl("secret", "create", "a", "-", input="one")
    swctl("secret", "create", "b", "-n", "other", "-", input="two")
    before = sealed.load(swctl.keyring)
    out = swctl("secret", "rotate-key").stdout
    after = sealed.load(swctl.keyring)
    assert after.primary != before.primary and list(after.keys) == [after.primary]
    assert "re-sealed 2 secrets" in out and f"dropped old key {before.primary}" in out
    for name, ns, value in (("a", "default", b"one"), ("b", "other", b"two")):
        obj = await store.get(SECRETS, name, ns)
        assert obj.spec["sealed"]["key"] == after.primary
        assert obj.spec["dataDigest"] == before.digest(value)  # no service rolls
    assert shown_value(swctl, "a") == "b25l"
    # Killed after the new key was saved: the next run carries on with that key.
    sealed.save(after.with_new_primary(), swctl.keyring)
    pending = sealed.load(swctl.keyring)
    out = swctl("secret", "rotate-key").stdout
    assert f"continuing a rotation under way: primary key {pending.primary}" in out
    assert list(sealed.load(swctl.keyring).keys) == [pending.primary]
