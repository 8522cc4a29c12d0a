"""A Secret's value as a manifest gives it and as etcd stores it; the digest of a value.

A manifest carries ``spec.data`` (base64). etcd never does: whoever writes a Secret
(``swctl apply``, ``swctl secret create|update``, ``stack deploy``) turns the manifest's
spec into the **stored form** with :func:`sealed_spec` -- ``{sealed, dataSize,
dataDigest}`` (``crds/sealed.py`` seals) -- and whoever needs the bytes (an agent
mounting it, ``--show-values``) gets them back with :func:`value`.

:func:`digest` is the one answer to "did this value change?": a Secret's
``spec.dataDigest`` (a keyed HMAC that key rotation keeps), a Config's ``sha256:<hex>``
of its text (Configs are stored plain). ``apply`` compares it to decide unchanged or
configured, ``get`` shows it, and the rotation controller records it per mounting
service. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from shoal.crds import openapi, resource, sealed
from shoal.crds.fielderrors import FieldError

DATA: Final = "data"
SEALED: Final = "sealed"
SIZE: Final = "dataSize"
DIGEST: Final = "dataDigest"
#: What the stored form holds in place of ``data``.
STORED_FIELDS: Final = (SEALED, SIZE, DIGEST)
#: When a Secret's or Config's value last changed (``secret ls``'s UPDATED), set by
#: whoever writes a new value; kept by ``apply`` when a manifest does not name it.
UPDATED_AT: Final = "shoal.io/updated-at"


def is_sealed(spec: Mapping[str, Any]) -> bool:
    return isinstance(spec.get(SEALED), dict)


def manifest_bytes(spec: Mapping[str, Any], where: str) -> bytes:
    """The plaintext of a manifest's ``spec.data``; ValueError saying how to fix it."""
    data = spec.get(DATA)
    if not isinstance(data, str):
        if any(f in spec for f in STORED_FIELDS):
            raise ValueError(
                f"spec.data: required in a manifest ({where}); spec.sealed, dataSize and "
                "dataDigest are what Shoal stores and prints in place of the value, and "
                "cannot be applied back: give the value base64-encoded in spec.data (or "
                "use `swctl secret create|update NAME FILE`)")
        raise ValueError(f"spec.data: required field missing ({where}); give the "
                         "secret's bytes base64-encoded")
    try:
        return openapi.decode_base64(data)
    except ValueError:
        raise ValueError(f"spec.data: is not base64 ({where})") from None


def sealed_spec(ring: sealed.Keyring, plaintext: bytes, namespace: str,
                name: str) -> dict[str, Any]:
    """The stored form of a Secret ``namespace/name`` holding ``plaintext``."""
    return {SEALED: ring.seal(plaintext, namespace, name), SIZE: len(plaintext),
            DIGEST: ring.digest(plaintext)}


def value(obj: resource.Resource, ring: sealed.Keyring | None) -> bytes:
    """The bytes a task gets: a Secret opened with ``ring`` (SealError if it cannot be),
    a Config's text. A Secret stored before sealing (plain ``data``) is read as is."""
    spec = obj.spec
    if obj.kind == "Secret" and is_sealed(spec):
        if ring is None:
            raise sealed.SealError(f'Secret "{obj.name}" is sealed; a keyring is needed '
                                   "to open it")
        return ring.open(spec[SEALED], obj.namespace or resource.DEFAULT_NAMESPACE,
                         obj.name)
    data = spec.get(DATA)
    if not isinstance(data, str):
        raise sealed.SealError(f'{obj.kind} "{obj.name}" holds no value')
    if obj.kind == "Secret":
        return openapi.decode_base64(data)
    return data.encode()


def plain_digest(raw: bytes) -> str:
    """A Config's digest (its text is no secret, so a plain hash will do)."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def digest(obj: resource.Resource) -> str | None:
    """What tells this value from another: see the module docstring. None: no value."""
    spec = obj.spec
    if obj.kind == "Secret" and isinstance(spec.get(DIGEST), str):
        return str(spec[DIGEST])
    raw = _plain_bytes(obj)
    return None if raw is None else plain_digest(raw)


def size(obj: resource.Resource) -> int | None:
    if type(obj.spec.get(SIZE)) is int:
        return int(obj.spec[SIZE])
    raw = _plain_bytes(obj)
    return None if raw is None else len(raw)


def _plain_bytes(obj: resource.Resource) -> bytes | None:
    # A Secret's data that is not base64 (admission refuses it) still gets a size and a
    # digest, of its text, so it is hidden like any other.
    data = obj.spec.get(DATA)
    if not isinstance(data, str):
        return None
    if obj.kind == "Secret":
        try:
            return openapi.decode_base64(data)
        except ValueError:
            pass
    return data.encode()


def form_problems(spec: Mapping[str, Any]) -> list[FieldError]:
    """A Secret's spec holds either ``data`` (a manifest) or the whole stored form."""
    has_data = DATA in spec
    stored = [f for f in STORED_FIELDS if f in spec]
    if has_data and stored:
        return [FieldError("spec", f"holds both data and {', '.join(stored)}; give "
                                   "spec.data alone (swctl seals it when it writes)")]
    if has_data:
        return []
    if not stored or SEALED not in stored:
        hint = ("spec.dataSize and spec.dataDigest are what get prints in place of a "
                "value and cannot be applied; " if stored else "")
        return [FieldError("spec.data", f"required field missing; {hint}give the secret's "
                                        "bytes base64-encoded in spec.data")]
    missing = [f for f in STORED_FIELDS if f not in spec]
    if missing:
        return [FieldError("spec", f"a sealed secret needs {', '.join(missing)} too")]
    return []
