"""Revisions: the history of a service's task-shaping specs, for rollbacks.

What it owns: recording the service's current sections (``taskspec.revision_spec``:
template, placement without rebalance, endpoint, networks) in ``status.revisions``,
renumbering and trimming it, and picking the revision a rollback request names. Pure;
the updater writes what comes out.

As kubectl's Deployment history: each new set of sections becomes the next number; when
the sections equal an older entry's (an undo, or a manifest applied again), that entry
is renumbered to the newest number instead of being kept twice, so ``previous`` is
always the set that ran before the current one. At most ``revisionHistoryLimit``
entries are kept (the oldest numbers go first). A ``forceUpdate`` bump or a replicas
change makes no revision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from shoal.controllers import taskspec

DEFAULT_LIMIT: Final = 10
PREVIOUS: Final = "previous"

Revision = dict[str, Any]


def history_limit(value: Any) -> int:
    """``spec.revisionHistoryLimit`` (>= 1), the default when unset or unreadable."""
    return value if type(value) is int and value >= 1 else DEFAULT_LIMIT


def readable(value: Any) -> list[Revision]:
    """``status.revisions`` as stored, without entries that cannot be read, oldest
    first (a hand-edited status must not stop the service's updates)."""
    if not isinstance(value, list):
        return []
    out = [r for r in value if isinstance(r, dict) and type(r.get("revision")) is int
           and isinstance(r.get("spec"), dict)]
    return sorted(out, key=lambda r: int(r["revision"]))


def record(history: Sequence[Mapping[str, Any]], spec: Mapping[str, Any], generation: int,
           cause: str | None, stamp: str, limit: int = DEFAULT_LIMIT
           ) -> tuple[list[Revision], int]:
    """``history`` with ``spec`` as its newest revision: (the new list, its number).

    Unchanged when the newest entry already holds ``spec``; an older entry with equal
    sections is renumbered to the next number (taking the new generation and cause);
    otherwise a new entry is appended. Trimmed to the ``limit`` newest.
    """
    entries = [dict(r) for r in readable(list(history))]
    newest = entries[-1]["revision"] if entries else 0
    if entries and taskspec.same_revision(entries[-1]["spec"], spec):
        current = entries[-1]
        return entries[-max(limit, 1):], int(current["revision"])
    match = next((r for r in entries if taskspec.same_revision(r["spec"], spec)), None)
    if match is not None:
        entries.remove(match)
        entry: Revision = {**match, "revision": newest + 1, "generation": generation,
                           "createdAt": stamp}
    else:
        entry = {"revision": newest + 1, "generation": generation, "createdAt": stamp,
                 "spec": dict(spec)}
    if cause:
        entry["changeCause"] = cause
    entries.append(entry)
    return entries[-max(limit, 1):], newest + 1


class RollbackError(ValueError):
    """A rollback request that cannot be carried out (the message says why)."""


def target(history: Sequence[Mapping[str, Any]], current: int, request: str) -> Revision:
    """The revision ``request`` (``previous`` or a number) names, given the current one.

    RollbackError when there is none: no earlier revision, a number not in history (the
    message lists those kept), the current revision itself, or a request that is
    neither."""
    entries = readable(list(history))
    kept = ", ".join(str(r["revision"]) for r in entries) or "none"
    word = request.strip()
    if word == PREVIOUS:
        older = [r for r in entries if r["revision"] < current]
        if not older:
            raise RollbackError(f"no revision before the current one ({current}) to roll "
                                f"back to; revisions kept: {kept}")
        return dict(older[-1])
    try:
        number = int(word)
    except ValueError:
        raise RollbackError(f"rollback request {request!r} is neither 'previous' nor a "
                            f"revision number") from None
    if number == current:
        raise RollbackError(f"revision {number} is the current one; nothing to roll back")
    for entry in entries:
        if entry["revision"] == number:
            return dict(entry)
    raise RollbackError(f"revision {number} is not in the history; revisions kept: {kept}")


def apply_to(spec: dict[str, Any], revision: Mapping[str, Any]) -> None:
    """Write ``revision``'s sections into a service ``spec`` (in place). Everything
    else stays: replicas, mode, updateConfig, rollbackConfig, and placement.rebalance."""
    sections = revision.get("spec") or {}
    spec["template"] = sections.get("template") or {}
    rebalance = (spec.get("placement") or {}).get("rebalance") if isinstance(
        spec.get("placement"), dict) else None
    placement = dict(sections.get("placement") or {})
    if rebalance is not None:
        placement["rebalance"] = rebalance
    if placement:
        spec["placement"] = placement
    else:
        spec.pop("placement", None)
    for section in ("endpoint", "networks"):
        if sections.get(section):
            spec[section] = sections[section]
        else:
            spec.pop(section, None)
