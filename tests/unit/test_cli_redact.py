"""Secrets and configs are printed as size and digest, never as their value."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shoal.cli import errors, keyring, redact
from shoal.crds import resource, sealed, secretdata


def test_secret_value_becomes_its_decoded_size_and_digest() -> None:
    secret = resource.new("Secret", "db-pass", "default", {"data": "aHVudGVyMg=="})
    shown = redact.hidden(secret)
    assert shown.spec == {"dataSize": 7,
                          "dataDigest": "sha256:" + hashlib.sha256(b"hunter2").hexdigest()}
    assert secret.spec == {"data": "aHVudGVyMg=="}  # the object itself is untouched
    assert "aHVudGVyMg" not in str(shown.to_dict())


def test_config_value_is_hidden_too_and_other_kinds_pass_unchanged() -> None:
    config = resource.new("Config", "site", "default", {"data": "héllo"})
    assert redact.hidden(config).spec["dataSize"] == len("héllo".encode())
    svc = resource.new("Service", "web", "default", {"template": {"image": "x"}})
    assert redact.hidden(svc) is svc


def test_show_values_keeps_them() -> None:
    secret = resource.new("Secret", "s", "default", {"data": "aGk="})
    assert redact.for_output([secret], show_values=True)[0].spec == {"data": "aGk="}
    assert "data" not in redact.for_output([secret])[0].spec


def test_undecodable_secret_is_still_hidden() -> None:
    secret = resource.new("Secret", "s", "default", {"data": "not base64!"})
    assert redact.hidden(secret).spec["dataSize"] == len(b"not base64!")


def test_a_sealed_secret_shows_its_stored_size_and_digest_and_opens_on_request(
        tmp_path: Path) -> None:
    ring = sealed.ensure(tmp_path / "keyring.json")
    spec = secretdata.sealed_spec(ring, b"hunter2", "default", "s")
    secret = resource.new("Secret", "s", "default", spec)
    assert redact.hidden(secret).spec == {"dataSize": 7, "dataDigest": ring.digest(b"hunter2")}
    opened = redact.for_output([secret], True, keyring.Source(tmp_path / "keyring.json"))
    assert opened[0].spec == {"data": "aHVudGVyMg=="}
    other = keyring.Source(tmp_path / "other.json")
    sealed.ensure(other.path)
    with pytest.raises(errors.CliError, match=r"does not hold.*keyring .*other\.json"):
        redact.for_output([secret], True, other)
