"""The registry as the cluster sees it: built-in kinds plus the CRDs stored in etcd.

CustomResourceDefinition objects are ordinary resources; turning them into served kinds
is done here, once per process start (and again by informers when CRDs change), so the
CLI, the runtime and user operators agree on what kinds exist.
"""

from __future__ import annotations

import structlog

from shoal.crds import kinds
from shoal.store import client

log = structlog.get_logger("shoal.store.kindsync")


def add_crd(registry: kinds.Registry, crd_doc: dict[str, object]) -> kinds.KindInfo | None:
    """Register one stored CRD; a CRD that clashes is logged and skipped, never fatal."""
    try:
        info = kinds.kind_info_from_crd(dict(crd_doc))
        registry.add(info)
        return info
    except (ValueError, TypeError) as exc:
        name = (crd_doc.get("metadata") or {})
        log.warning("ignoring stored CustomResourceDefinition", key=str(name), error=str(exc))
        return None


async def load_registry(store: client.Store) -> kinds.Registry:
    """Built-in kinds plus every CustomResourceDefinition in the store."""
    registry = kinds.Registry.builtin()
    crd_info = registry.lookup(kinds.CRD_KIND)
    crds, _ = await store.list(crd_info)
    for crd in crds:
        add_crd(registry, crd.to_dict())
    return registry
