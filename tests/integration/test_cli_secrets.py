"""Secrets and configs do not leak: ``get -o yaml|json``, ``get -w``, ``describe`` and
``diff`` print their size and digest, never the value; ``--show-values`` prints it. A
Secret is sealed in etcd: its raw bytes there hold neither the value nor its base64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shoal.crds import kinds, sealed
from shoal.store import client, etcd_server
from tests.integration.cli_support import Swctl

VALUE = "hunter2"
ENCODED = "aHVudGVyMg=="  # base64 of hunter2
SECRET = """\
apiVersion: shoal.io/v1
kind: Secret
metadata: {name: db_pass}
spec: {data: aHVudGVyMg==}
"""


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    sw = Swctl(etcd.url, prefix, tmp_path)
    sw.write("secret.yaml", SECRET)
    sw("apply", "-f", "secret.yaml")
    return sw


def digest(swctl: Swctl, raw: bytes) -> str:
    return sealed.load(swctl.keyring).digest(raw)


def assert_hidden(text: str) -> None:
    assert ENCODED not in text and VALUE not in text


def test_get_yaml_and_json_show_size_and_digest(swctl: Swctl) -> None:
    # swctl get secret db_pass -o yaml
    shown = swctl("get", "secret", "db_pass", "-o", "yaml").stdout
    assert_hidden(shown)
    assert yaml.safe_load(shown)["spec"] == {"dataSize": 7,
                                             "dataDigest": digest(swctl, b"hunter2")}
    # swctl get secrets -o json
    listed = json.loads(swctl("get", "secrets", "-o", "json").stdout)
    assert listed["items"][0]["spec"] == {"dataSize": 7,
                                          "dataDigest": digest(swctl, b"hunter2")}
    # What was printed cannot be re-applied by mistake: no value, refused.
    swctl.write("again.yaml", shown)
    refused = swctl("apply", "-f", "again.yaml", expect=1).stderr
    assert "spec.data" in refused
    # swctl get secret db_pass -o yaml --show-values
    admin = swctl("get", "secret", "db_pass", "-o", "yaml", "--show-values").stdout
    assert yaml.safe_load(admin)["spec"] == {"data": ENCODED}


def test_get_watch_hides_values(swctl: Swctl) -> None:
    watching = swctl.start("get", "secrets", "-o", "yaml", "-w")
    try:
        seen = []
        while "dataDigest" not in "\n".join(seen):
            seen.append(watching.read_line())
        assert_hidden("\n".join(seen))
    finally:
        watching.kill()


def test_describe_hides_values_unless_asked(swctl: Swctl) -> None:
    # swctl describe secret db_pass
    text = swctl("describe", "secret", "db_pass").stdout
    assert_hidden(text)
    assert f"dataDigest: {digest(swctl, b'hunter2')}" in text and "dataSize: 7" in text
    assert f"data: {ENCODED}" in swctl("describe", "secret", "db_pass",
                                       "--show-values").stdout


def test_diff_shows_a_changed_digest_not_the_values(swctl: Swctl) -> None:
    swctl.write("secret.yaml", SECRET.replace(ENCODED, "czNjcjN0"))  # s3cr3t
    # swctl diff -f secret.yaml
    diff = swctl("diff", "-f", "secret.yaml", expect=1).stdout
    assert_hidden(diff)
    assert "czNjcjN0" not in diff and "s3cr3t" not in diff
    assert f"-  dataDigest: {digest(swctl, b'hunter2')}" in diff
    assert f"+  dataDigest: {digest(swctl, b's3cr3t')}" in diff
    # Configs likewise.
    swctl.write("config.yaml", "apiVersion: shoal.io/v1\nkind: Config\n"
                               "metadata: {name: site}\nspec: {data: top secret text}\n")
    new = swctl("diff", "-f", "config.yaml", expect=1).stdout
    assert "top secret text" not in new and "dataSize: 15" in new


async def test_etcd_holds_the_secret_sealed(swctl: Swctl, store: client.Store) -> None:
    kvs, _ = await store.raw_list(store.prefix.encode())
    raw = b"".join(kv.value for kv in kvs)
    assert b"db_pass" in raw  # the object is there...
    assert VALUE.encode() not in raw and ENCODED.encode() not in raw  # ...its value is not
    stored = await store.get(kinds.Registry.builtin().lookup("secrets"), "db_pass")
    assert set(stored.spec) == {"sealed", "dataSize", "dataDigest"}
    # Re-applying the same value is unchanged (digests compared: every sealing differs).
    assert swctl("apply", "-f", "secret.yaml").stdout == "secret/db_pass unchanged\n"
    # Without the keyring, nothing is written, and the error says where to find it.
    swctl.write("other.yaml", SECRET.replace("db_pass", "other"))
    env_less = swctl("--keyring", str(swctl.cwd / "nowhere.json"), "apply", "-f",
                     "other.yaml", expect=1).stderr
    assert "no keyring at" in env_less and "--keyring" in env_less
