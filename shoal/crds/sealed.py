"""Secret values sealed for etcd: AES-256-GCM under a cluster key that never enters etcd.

Whoever can read etcd (a backup, a snapshot, a node's client certificate) must not read
secrets from it, so a Secret's bytes are stored as ``spec.sealed`` -- a nonce and a
ciphertext under one key of the cluster's **keyring**, a small file kept beside the
cluster's state (``swctl up`` makes it, mode 0600) and handed to whatever must seal or
open a value: ``swctl`` when it writes a Secret, an agent when it mounts one.

The keyring is a JSON file ``{"primary": ID, "keys": {ID: base64 32-byte key},
"digestKey": base64 32 bytes}``. New values are sealed under the primary key; any key in
the ring opens what it sealed, so a key can be rotated by adding a new primary,
re-sealing every Secret, then dropping the old key. ``digest`` is what get, describe and
diff show of a value and what tells a changed value from an unchanged one: an HMAC under
the ring's digest key, which rotation keeps, so re-sealing changes no digest (and rolls
no service) and etcd never holds a plain hash a short password could be guessed from.

The ciphertext is bound (as GCM's associated data) to the Secret's namespace and name,
so a sealed value copied onto another Secret does not open.

Pure apart from reading and writing the keyring file; ``cryptography`` does the AEAD,
because hand-written crypto is the one thing never to hand-write.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Environment variable naming the keyring file when no ``--keyring`` flag is given.
KEYRING_ENV: Final = "SHOAL_KEYRING"
#: The keyring's file name inside a cluster's state directory.
KEYRING_FILE: Final = "keyring.json"
ALGORITHM: Final = "AES-256-GCM"
_NONCE_BYTES: Final = 12
_KEY_BYTES: Final = 32


class SealError(Exception):
    """A keyring that cannot be read, or a sealed value that does not open under it."""


@dataclasses.dataclass(frozen=True)
class Keyring:
    """The cluster's secret keys: ``primary`` seals, every key opens."""

    primary: str
    keys: Mapping[str, bytes]
    digest_key: bytes

    @classmethod
    def generate(cls) -> Keyring:
        key_id = _new_id()
        return cls(primary=key_id, keys={key_id: AESGCM.generate_key(bit_length=256)},
                   digest_key=os.urandom(_KEY_BYTES))

    def with_new_primary(self) -> Keyring:
        """This ring plus a fresh key that seals from now on (the first step of rotation)."""
        key_id = _new_id()
        return dataclasses.replace(
            self, primary=key_id,
            keys={**self.keys, key_id: AESGCM.generate_key(bit_length=256)})

    def only_primary(self) -> Keyring:
        """The ring without its old keys (the last step of rotation, once re-sealed)."""
        return dataclasses.replace(self, keys={self.primary: self.keys[self.primary]})

    def digest(self, plaintext: bytes) -> str:
        """``hmac-sha256:<hex>`` of a value: stable across key rotation, no plain hash."""
        return "hmac-sha256:" + hmac.new(self.digest_key, plaintext, hashlib.sha256).hexdigest()

    def seal(self, plaintext: bytes, namespace: str, name: str) -> dict[str, Any]:
        """``spec.sealed`` for a Secret ``namespace/name`` holding ``plaintext``."""
        nonce = os.urandom(_NONCE_BYTES)
        box = AESGCM(self.keys[self.primary])
        ciphertext = box.encrypt(nonce, plaintext, _bound_to(namespace, name))
        return {"algorithm": ALGORITHM, "key": self.primary,
                "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}

    def open(self, sealed: Mapping[str, Any], namespace: str, name: str) -> bytes:
        """The plaintext of ``spec.sealed``; :class:`SealError` saying why it cannot be."""
        where = f'Secret "{name}" in namespace "{namespace}"'
        if sealed.get("algorithm") != ALGORITHM:
            raise SealError(f"{where} is sealed with {sealed.get('algorithm')!r}, "
                            f"not {ALGORITHM}")
        key_id = str(sealed.get("key"))
        key = self.keys.get(key_id)
        if key is None:
            raise SealError(f"{where} is sealed under key {key_id}, which this keyring "
                            f"does not hold (it holds {', '.join(sorted(self.keys))}); "
                            "use the cluster's keyring, or re-create the secret")
        try:
            nonce = base64.b64decode(str(sealed.get("nonce")), validate=True)
            ciphertext = base64.b64decode(str(sealed.get("ciphertext")), validate=True)
            return AESGCM(key).decrypt(nonce, ciphertext, _bound_to(namespace, name))
        except (binascii.Error, ValueError, InvalidTag):
            raise SealError(f"{where} does not open under key {key_id}: it was altered, "
                            "or sealed for another secret") from None

    def to_json(self) -> dict[str, Any]:
        return {"primary": self.primary,
                "keys": {k: _b64(v) for k, v in sorted(self.keys.items())},
                "digestKey": _b64(self.digest_key)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Keyring:
        try:
            keys = {str(k): base64.b64decode(v, validate=True)
                    for k, v in dict(data["keys"]).items()}
            primary = str(data["primary"])
            digest_key = base64.b64decode(data["digestKey"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise SealError(f"{where} is not a Shoal keyring ({exc})") from None
        if primary not in keys:
            raise SealError(f"{where}: primary key {primary} is not among its keys")
        if any(len(k) != _KEY_BYTES for k in [*keys.values(), digest_key]):
            raise SealError(f"{where}: every key must be {_KEY_BYTES} bytes")
        return cls(primary=primary, keys=keys, digest_key=digest_key)


def load(path: Path) -> Keyring:
    """The keyring at ``path``; :class:`SealError` naming the file if it is missing or bad."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SealError(f"no keyring at {path}: secrets are sealed with the cluster's "
                        f"keyring; pass --keyring or set {KEYRING_ENV} to its path "
                        "(swctl up makes one in its state directory)") from None
    except OSError as exc:
        raise SealError(f"cannot read the keyring {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SealError(f"{path} is not a Shoal keyring ({exc})") from None
    return Keyring.from_json(data, str(path))


def save(ring: Keyring, path: Path) -> None:
    """Write ``ring`` to ``path`` (mode 0600) atomically: a crash leaves the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(ring.to_json(), out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def ensure(path: Path) -> Keyring:
    """The keyring at ``path``, made first if there is none (``swctl up``)."""
    if not path.exists():
        save(Keyring.generate(), path)
    return load(path)


def _bound_to(namespace: str, name: str) -> bytes:
    return f"shoal.io/v1/secrets/{namespace}/{name}".encode()


def _new_id() -> str:
    return secrets.token_hex(4)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
