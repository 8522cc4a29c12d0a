"""Secrets and configs are printed as size and digest, never as their value."""

from __future__ import annotations

import hashlib

from shoal.cli import redact
from shoal.crds import resource


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
