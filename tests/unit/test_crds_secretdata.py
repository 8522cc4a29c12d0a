"""A Secret's stored form: what a manifest may carry, sealing, opening, digests."""

from __future__ import annotations

import pytest

from shoal.crds import resource, sealed, secretdata


def test_sealed_spec_holds_no_value_and_opens_back() -> None:
    ring = sealed.Keyring.generate()
    spec = secretdata.sealed_spec(ring, b"hunter2", "default", "db_pass")
    assert set(spec) == {"sealed", "dataSize", "dataDigest"} and spec["dataSize"] == 7
    assert "hunter2" not in str(spec) and "aHVudGVyMg" not in str(spec)
    secret = resource.new("Secret", "db_pass", "default", spec)
    assert secretdata.value(secret, ring) == b"hunter2"
    assert secretdata.digest(secret) == ring.digest(b"hunter2")
    with pytest.raises(sealed.SealError, match="keyring is needed"):
        secretdata.value(secret, None)


def test_a_manifest_must_carry_data() -> None:
    assert secretdata.manifest_bytes({"data": "aGk="}, "file s.yaml") == b"hi"
    with pytest.raises(ValueError, match=r"spec.data: required in a manifest \(file s.yaml\)"):
        secretdata.manifest_bytes({"dataSize": 2, "dataDigest": "x"}, "file s.yaml")


@pytest.mark.parametrize(("spec", "problem"), [
    ({"data": "aGk="}, None),
    ({"sealed": {}, "dataSize": 2, "dataDigest": "d"}, None),
    ({}, "spec.data: required field missing; give"),
    ({"dataSize": 2, "dataDigest": "d"}, "what get prints in place of a value"),
    ({"data": "aGk=", "dataDigest": "d"}, "holds both data and dataDigest"),
    ({"sealed": {}}, "needs dataSize, dataDigest too"),
])
def test_form_problems(spec: dict[str, object], problem: str | None) -> None:
    found = [str(p) for p in secretdata.form_problems(spec)]
    assert (problem is None and not found) or (problem is not None and problem in found[0])


def test_config_digest_is_a_plain_hash_of_its_text() -> None:
    config = resource.new("Config", "site", "default", {"data": "hi"})
    assert secretdata.digest(config) == secretdata.plain_digest(b"hi")
    assert secretdata.size(config) == 2
