"""``shoal.io/mounted-digests``: which value of each Secret and Config a Service's tasks got.

The rotation controller keeps, on every Service that mounts secrets or configs, a JSON
map ``{"secret/<name>": digest, "config/<name>": digest}`` (``secretdata.digest``) of
the values its tasks were last rolled with; a value whose digest no longer matches is
the signal to roll the service again. ``swctl apply`` keeps the live annotation when a
manifest does not name it (as it keeps ``updatemeta.MANAGED_ANNOTATIONS``), so
re-applying an unchanged file rolls nothing. Here because the controller and the CLI
both read it. Pure; a malformed stored value reads as absent (it is then recorded
afresh, which rolls nothing).
"""

from __future__ import annotations

import json
from typing import Final

from shoal.crds import resource

MOUNTED_DIGESTS: Final = "shoal.io/mounted-digests"
SECRET: Final = "secret"
CONFIG: Final = "config"
KINDS: Final = {SECRET: "Secret", CONFIG: "Config"}


def key(kind: str, name: str) -> str:
    """``secret/db_pass``: a map key (``kind`` is ``secret`` or ``config``)."""
    return f"{kind}/{name}"


def split(entry: str) -> tuple[str, str]:
    kind, _, name = entry.partition("/")
    return kind, name


def mounted(service: resource.Resource) -> list[str]:
    """The keys of what ``service`` mounts, each once, secrets first, in field order."""
    tpl = service.spec.get("template")
    if not isinstance(tpl, dict):
        return []
    out: list[str] = []
    for kind, field in ((SECRET, "secrets"), (CONFIG, "configs")):
        for ref in tpl.get(field) or []:
            source = ref.get("source") if isinstance(ref, dict) else None
            if isinstance(source, str) and source and key(kind, source) not in out:
                out.append(key(kind, source))
    return out


def recorded(service: resource.Resource) -> dict[str, str] | None:
    """The stored map, or None when absent or unreadable."""
    raw = service.metadata.annotations.get(MOUNTED_DIGESTS)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None
    return {str(k): str(v) for k, v in data.items()}


def render(digests: dict[str, str]) -> str:
    return json.dumps(dict(sorted(digests.items())), separators=(",", ":"))

