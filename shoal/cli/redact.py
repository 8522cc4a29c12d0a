"""What ``swctl`` prints of Secrets and Configs: never their values, unless asked.

``get -o yaml|json``, ``get -w``, ``describe`` and ``diff`` print objects whole, and
terminals, CI logs and pasted bug reports keep what they show; a secret's value must not
be in any of them by accident. So every verb that prints objects passes them through
:func:`for_output`, which shows a Secret or Config as its size in bytes
(``spec.dataSize``; a Secret's decoded bytes) and digest (``spec.dataDigest``:
``secretdata.digest``, a keyed ``hmac-sha256:`` for a Secret, ``sha256:`` for a Config)
-- enough to tell whether two values are the same or a value changed, as ``diff``
needs. A stored Secret already has those (and a ``spec.sealed`` ciphertext, which is
dropped too: it is noise to a reader); a Config's are computed from its text. ``get``
and ``describe`` take ``--show-values`` for an admin who does want the value: a Secret
is opened with the keyring and shown as ``spec.data``. Output printed without values
cannot be re-applied by mistake: admission refuses a Secret or Config without
``spec.data``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, Final

from shoal.cli import keyring
from shoal.crds import resource, sealed, secretdata

#: Kinds whose ``spec.data`` is a value to hide.
VALUE_KINDS: Final = frozenset({"Secret", "Config"})
SHOW_VALUES_HELP: Final = ("print the values of secrets and configs (hidden by default: "
                           "their size and digest are shown instead)")


def hidden(obj: resource.Resource) -> resource.Resource:
    """``obj`` with its value replaced by size and digest (other kinds: ``obj`` itself)."""
    if obj.kind not in VALUE_KINDS or not any(
            f in obj.spec for f in (secretdata.DATA, secretdata.SEALED)):
        return obj
    out = obj.deepcopy()
    size, digest = secretdata.size(obj), secretdata.digest(obj)
    spec: dict[str, Any] = {k: v for k, v in out.spec.items()
                            if k not in (secretdata.DATA, *secretdata.STORED_FIELDS)}
    if size is not None and digest is not None:
        spec[secretdata.SIZE] = size
        spec[secretdata.DIGEST] = digest
    out.spec = spec
    return out


def shown(obj: resource.Resource, ring: keyring.Source) -> resource.Resource:
    """``obj`` with its value as ``spec.data`` (a Secret opened with ``ring``)."""
    if obj.kind != "Secret" or not secretdata.is_sealed(obj.spec):
        return obj
    try:
        raw = secretdata.value(obj, ring.get())
    except sealed.SealError as exc:
        raise keyring.cannot_open(exc, ring) from None
    out = obj.deepcopy()
    out.spec = {**{k: v for k, v in out.spec.items() if k not in secretdata.STORED_FIELDS},
                secretdata.DATA: base64.b64encode(raw).decode()}
    return out


def for_output(objs: Iterable[resource.Resource], show_values: bool = False,
               ring: keyring.Source | None = None) -> list[resource.Resource]:
    """``objs`` as they may be printed (``ring``: the keyring for ``show_values``)."""
    if not show_values:
        return [hidden(o) for o in objs]
    source = ring or keyring.Source(None)
    return [shown(o, source) for o in objs]
