"""Which Secrets and Configs a node needs, and the copies it gets: pure decisions.

A node's agent may read only its own keys (docs/security.md), so the objects its tasks
mount are copied to ``<p>/nodes/<node>/secrets/<ns>/<name>`` and ``.../configs/...``:
the object exactly as stored (a Secret stays sealed), with the source's
``resourceVersion`` recorded in an annotation so a copy is rewritten only when its
source changed. A task that names an object which does not exist gets a *tombstone*
copy (an annotation saying so), so its agent rejects the task saying what is missing,
instead of waiting for a copy that will never come.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.crds import template as tpl

SOURCE_ANNOTATION: Final = "shoal.io/source-revision"
MISSING_ANNOTATION: Final = "shoal.io/missing"
SECTIONS: Final = {"secrets": "Secret", "configs": "Config"}


class Ref(NamedTuple):
    """One copy: which node holds which object."""

    node: str
    section: str  # "secrets" | "configs"
    namespace: str
    name: str


def wanted(task: resource.Resource, node: str | None) -> frozenset[Ref]:
    """The copies ``task`` needs on its node: none once it has ended or if its template
    cannot be read (the agent rejects such a task without reading any file)."""
    if node is None or ts.has_ended(task):
        return frozenset()
    template = task.spec.get("template")
    if not isinstance(template, dict) or not (
            template.get("secrets") or template.get("configs")):
        return frozenset()  # most tasks: nothing to read further
    try:
        secrets, configs = tpl.secrets(template), tpl.configs(template)
    except tpl.TemplateError:
        return frozenset()
    ns = ts.namespace_of(task)
    return frozenset([*(Ref(node, "secrets", ns, r.source) for r in secrets),
                      *(Ref(node, "configs", ns, r.source) for r in configs)])


def copy_of(source: resource.Resource | None, ref: Ref) -> resource.Resource:
    """The copy of ``source`` for ``ref``'s node, or its tombstone when there is none."""
    if source is None:
        obj = resource.new(SECTIONS[ref.section], ref.name, ref.namespace)
        obj.metadata.annotations[MISSING_ANNOTATION] = "true"
        return obj
    meta = source.metadata.copy()
    meta.annotations = {**meta.annotations,
                        SOURCE_ANNOTATION: source.metadata.resourceVersion or ""}
    return resource.Resource(source.kind, meta, source.spec, {}, source.apiVersion)


def version_of(source: resource.Resource | None) -> str:
    """What a copy records of its source, to tell whether it must be rewritten."""
    return "" if source is None else source.metadata.resourceVersion or "?"


def recorded_version(copy: dict[str, Any]) -> str | None:
    """The source version a stored copy (decoded JSON) was made from; None if unreadable."""
    meta = copy.get("metadata")
    if not isinstance(meta, dict):
        return None
    notes = meta.get("annotations")
    if not isinstance(notes, dict):
        return None
    if notes.get(MISSING_ANNOTATION) == "true":
        return ""
    value = notes.get(SOURCE_ANNOTATION)
    return value if isinstance(value, str) else None
