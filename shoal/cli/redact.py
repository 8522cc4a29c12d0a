"""What ``swctl`` prints of Secrets and Configs: never their values, unless asked.

``get -o yaml|json``, ``get -w``, ``describe`` and ``diff`` print objects whole, and
terminals, CI logs and pasted bug reports keep what they show; a secret's value must not
be in any of them by accident. So every verb that prints objects passes them through
:func:`for_output`, which replaces ``spec.data`` of a Secret or Config with its size in
bytes (``spec.dataSize``; a Secret's decoded bytes) and SHA-256 digest
(``spec.dataDigest``, ``sha256:<hex>``) — enough to tell whether two values are the same
or a value changed, as ``diff`` needs. ``get`` and ``describe`` take ``--show-values``
for an admin who does want the value. Output printed without values cannot be re-applied
by mistake: admission refuses a Secret or Config without ``spec.data``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

from shoal.crds import openapi, resource

#: Kinds whose ``spec.data`` is a value to hide.
VALUE_KINDS: Final = frozenset({"Secret", "Config"})
SHOW_VALUES_HELP: Final = ("print the values of secrets and configs (hidden by default: "
                           "their size and sha256 digest are shown instead)")


def value_bytes(obj: resource.Resource) -> bytes | None:
    """The value as tasks would get it: a Secret's decoded bytes, a Config's text."""
    data = obj.spec.get("data")
    if not isinstance(data, str):
        return None
    if obj.kind == "Secret":
        try:
            return openapi.decode_base64(data)
        except ValueError:
            pass  # admission refuses it; still never print it
    return data.encode()


def hidden(obj: resource.Resource) -> resource.Resource:
    """``obj`` with its value replaced by size and digest (other kinds: ``obj`` itself)."""
    if obj.kind not in VALUE_KINDS or "data" not in obj.spec:
        return obj
    out = obj.deepcopy()
    value = value_bytes(obj)
    spec: dict[str, Any] = {k: v for k, v in out.spec.items() if k != "data"}
    if value is not None:
        spec["dataSize"] = len(value)
        spec["dataDigest"] = "sha256:" + hashlib.sha256(value).hexdigest()
    out.spec = spec
    return out


def for_output(objs: Iterable[resource.Resource], show_values: bool = False,
               ) -> list[resource.Resource]:
    """``objs`` as they may be printed."""
    return list(objs) if show_values else [hidden(o) for o in objs]
