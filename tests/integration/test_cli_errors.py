"""Bad input gets ``error: ...`` on stderr saying what, where and how to fix, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.store import etcd_server
from tests.integration.cli_support import Swctl, service


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def test_unknown_kind_lists_known_kinds(swctl: Swctl) -> None:
    err = swctl("get", "widgets", expect=1).stderr
    assert err.startswith('error: unknown kind "widgets": known kinds are ')
    assert "services" in err and "customresourcedefinitions" in err
    path = swctl.write("w.yaml", "apiVersion: shoal.io/v1\nkind: Servise\nmetadata: {name: w}\n")
    err = swctl("apply", "-f", str(path), expect=1).stderr
    assert 'kind: unknown kind "Servise"' in err and 'did you mean "Service"?' in err
    assert f"file {path}, document 1" in err


def test_unreachable_etcd_names_url_and_how_to_start_one(swctl: Swctl) -> None:
    url = f"http://127.0.0.1:{etcd_server.free_port()}"
    result = swctl("--etcd", url, "--request-timeout", "1", "get", "svc", expect=1)
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach etcd at {url}")
    assert "swctl up" in result.stderr and "--etcd URL" in result.stderr
    # The flag works after the verb too, and a malformed URL is its own clear error.
    err = swctl("get", "svc", "--etcd", "ftp://x", expect=1).stderr
    assert err.startswith('error: invalid etcd URL "ftp://x"')


def test_missing_and_invalid_manifests(swctl: Swctl) -> None:
    err = swctl("apply", "-f", "nope.yaml", expect=1).stderr
    assert err == 'error: the path "nope.yaml" does not exist (check the -f argument)\n'
    listing = swctl.write("list.yaml", "- a\n- b\n")
    err = swctl("apply", "-f", str(listing), expect=1).stderr
    assert f"file {listing}, document 1: a manifest document must be a mapping" in err
    (swctl.cwd / "empty").mkdir()
    err = swctl("apply", "-f", "empty", expect=1).stderr
    assert err.startswith('error: no manifest files (.yaml, .yml, .json) in directory "empty"')
    twice = swctl.write("twice.yaml", service("web") + "---\n" + service("web"))
    err = swctl("apply", "-f", str(twice), expect=1).stderr
    assert "services/default/web is defined twice" in err


def test_usage_errors_use_the_same_shape(swctl: Swctl) -> None:
    err = swctl("get", "svc", "-o", "bogus", expect=1).stderr
    assert err.startswith("error: argument -o/--output: invalid choice: 'bogus'")
    assert "see `swctl get --help`" in err
    swctl("diff", expect=2)  # diff keeps 1 for "differences found"
