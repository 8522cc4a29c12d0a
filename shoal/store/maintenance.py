"""Getting etcd out of its NOSPACE alarm: compact, defragment each member, disarm.

When a member's backend file reaches ``--quota-backend-bytes`` etcd raises the NOSPACE
alarm and every member refuses writes that add data (puts, lease grants) until an
operator compacts the history, defragments the members (only that shrinks the file
etcd measures against the quota) and disarms the alarm. Disarming without freeing
space would be undone by the next write, so :func:`recover_space` disarms only when
every member's file is back below the quota with some room (:func:`should_disarm`).

The procedure is idempotent, so any number of callers may run it at once (the
controller-managers' maintenance loops, ``swctl etcd recover-space``): compacting to a
revision already compacted is skipped, a member whose file has little left to give back
(:func:`needs_defrag`: someone defragmented it a moment ago) is not defragmented again,
and disarming an alarm that is gone changes nothing. Members are defragmented one at a
time, since a member serves nothing while it defragments.

The quota itself is not reported by etcd (3.4's Status has no field for it), so callers
pass the one the members run with: ``etcd_server.QUOTA_BYTES`` for the etcd Shoal
starts. The decisions and messages are pure functions, tested without etcd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from typing import Final

from shoal.store import errors, etcd, etcd_server

#: The environment variable naming the members' --quota-backend-bytes (etcd does not
#: report it) for the controller-managers and swctl.
QUOTA_ENV: Final = "SHOAL_ETCD_QUOTA_BYTES"
#: Disarm only when every member's file is at most this share of the quota: a file
#: just under it would raise the alarm again with the next few writes.
DISARM_BELOW: Final = 0.95
#: Above this share after recovery, the Event warns that compaction is not enough.
TIGHT_ABOVE: Final = 0.8
#: etcd's backend commits every 100 ms; the sizes it reports lag until then.
COMMIT_LAG: Final = 0.2
#: A member is worth defragmenting when at least this share of its file is free...
DEFRAG_FREE_SHARE: Final = 0.1
#: ...or at least this many bytes are.
DEFRAG_FREE_BYTES: Final = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What one :func:`recover_space` did, for logs, Events and swctl."""

    alarmed: tuple[int, ...]            # members with a NOSPACE alarm when it started
    compacted_to: int                   # the revision compacted to (0: someone else had)
    before: tuple[etcd.MemberSpace, ...]
    after: tuple[etcd.MemberSpace, ...]
    defragmented: tuple[str, ...]       # endpoints defragmented by this call
    quota: int
    disarmed: bool


def quota_from_env(environ: dict[str, str] | None = None) -> int:
    """The members' ``--quota-backend-bytes``: ``$SHOAL_ETCD_QUOTA_BYTES`` or Shoal's own."""
    raw = (environ if environ is not None else dict(os.environ)).get(QUOTA_ENV, "").strip()
    if not raw:
        return etcd_server.QUOTA_BYTES
    try:
        quota = int(raw)
    except ValueError:
        quota = 0
    if quota <= 0:
        raise ValueError(f'{QUOTA_ENV}="{raw}": expected the etcd members\' '
                         "--quota-backend-bytes, a positive number of bytes")
    return quota


def quota_if_known() -> int | None:
    """The quota ``$SHOAL_ETCD_QUOTA_BYTES`` names, None if unset or unreadable (swctl:
    a message then says where the quota is set instead of guessing it)."""
    try:
        return quota_from_env() if os.environ.get(QUOTA_ENV) else None
    except ValueError:
        return None


def mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def needs_defrag(space: etcd.MemberSpace) -> bool:
    """Whether defragmenting the member would give back enough to be worth a pause."""
    free = space.db_size - space.db_in_use
    return free > 0 and (free >= DEFRAG_FREE_BYTES or free >= space.db_size * DEFRAG_FREE_SHARE)


def to_defragment(space: etcd.MemberSpace, quota: int, first: bool) -> bool:
    """Whether :func:`recover_space` defragments a member: one over the limit on the first
    try of an outage (the sizes in use lag a compaction by a backend commit, so they do
    not say yet what it freed), and later any with enough to give back; a member someone
    defragmented a moment ago is neither."""
    return (first and space.db_size > quota * DISARM_BELOW) or needs_defrag(space)


def should_disarm(after: Sequence[etcd.MemberSpace], quota: int) -> bool:
    """Disarm once every member's file is well below the quota (it is what etcd checks)."""
    return bool(after) and max(s.db_size for s in after) <= quota * DISARM_BELOW


def sizes(spaces: Sequence[etcd.MemberSpace], quota: int) -> str:
    """``db 63.9 MiB of 64.0 MiB quota at http://a:2379, ...``."""
    return ", ".join(f"db {mib(s.db_size)} of {mib(quota)} quota at {s.endpoint}"
                     for s in spaces) or "no member answered"


def out_of_space_message(spaces: Sequence[etcd.MemberSpace], quota: int) -> str:
    return (f"etcd is out of space and refuses writes (NOSPACE alarm; {sizes(spaces, quota)}): "
            "compacting and defragmenting it")


def outcome_message(rec: Recovery) -> str:
    """What the Event of a finished recovery says, and what the user must do if anything."""
    done = (f"compacted to revision {rec.compacted_to}, " if rec.compacted_to else "") + \
        (f"defragmented {len(rec.defragmented)} member(s)" if rec.defragmented
         else "no member needed defragmenting")
    now = sizes(rec.after, rec.quota)
    if not rec.disarmed:
        return (f"etcd is still out of space after recovery ({done}; {now}): the data "
                f"itself outgrew the quota. Delete objects you do not need (`swctl delete`, "
                "deletes are still accepted), or raise --quota-backend-bytes on every etcd "
                "member and restart them one at a time, then run `swctl etcd recover-space "
                "--quota-bytes N` (or `etcdctl alarm disarm`)")
    tight = max((s.db_size for s in rec.after), default=0) > rec.quota * TIGHT_ABOVE
    hint = (" Little room is left: raise --quota-backend-bytes on every etcd member, or "
            "delete objects, before it fills again." if tight else "")
    return f"etcd space recovered: {done}; {now}; alarm disarmed, writes accepted.{hint}"


def member_endpoints(members: Sequence[etcd.Member], scheme: str,
                     known: Sequence[etcd.Endpoint]) -> dict[int, str]:
    """Each voting member's id -> the client URL to reach it on (one per member)."""
    out: dict[int, str] = {}
    for member in members:
        eps = etcd.member_endpoints([member], scheme, known)
        if eps:
            out[member.id] = eps[0].url
    return out


async def spaces(client: etcd.EtcdClient) -> list[etcd.MemberSpace]:
    """Every reachable member's sizes (a member that does not answer is left out)."""
    members = await client.member_list()
    urls = member_endpoints(members, client.endpoints[0].scheme, client.endpoints)
    out = []
    for url in urls.values():
        try:
            out.append(await client.space(url))
        except errors.UnavailableError:
            continue
    return out


async def alarm_report(client: etcd.EtcdClient, quota: int | None = None) -> str:
    """One line naming the members out of space and their sizes, '' without an alarm.

    ``quota`` None: the quota is not known here (swctl), so the line says where it is set.
    """
    alarmed = await no_space_alarms(client)
    if not alarmed:
        return ""
    members = await client.member_list()
    names = {m.id: m.name or f"{m.id:x}" for m in members}
    urls = member_endpoints(members, client.endpoints[0].scheme, client.endpoints)
    parts = []
    for member in alarmed:
        where = f"{names.get(member, f'{member:x}')} ({urls.get(member, 'no client URL')})"
        try:
            space = await client.space(urls[member]) if member in urls else None
        except errors.UnavailableError:
            space = None
        size = f"db {mib(space.db_size)}" if space is not None else "db size unknown"
        parts.append(f"{where}: {size}")
    limit = (f"quota {mib(quota)}" if quota else
             "the limit is the members' --quota-backend-bytes, 4 GiB in the etcd Shoal starts")
    return f"NOSPACE alarm on {', '.join(parts)}; {limit}"


async def no_space_alarms(client: etcd.EtcdClient) -> list[int]:
    """The members whose NOSPACE alarm is raised."""
    return [member for member, alarm in await client.alarms() if alarm == "NOSPACE"]


async def recover_space(client: etcd.EtcdClient, quota: int, force: bool = False,
                        first: bool = True, revision: int = 0) -> Recovery | None:
    """Compact, defragment and (if it freed enough) disarm; None if no alarm was raised
    (unless ``force``: then compact and defragment anyway). ``first``: the first try of
    this outage (see :func:`to_defragment`); a retry after a try that freed too little
    defragments only members with space to give back, not every member every time.
    ``revision``: compact to it (0: the current one). Compacting cuts the history every
    watcher resumes from: one a little behind must then re-list, so a caller that can
    (the maintenance loop) passes a revision a couple of seconds old -- the junk that
    filled etcd was written before the alarm, so that frees it just the same."""
    alarmed = await no_space_alarms(client)
    if not alarmed and not force:
        return None
    revision = revision or await client.current_revision()
    try:
        await client.compact(revision)
    except errors.UnavailableError as exc:
        if "compacted" not in str(exc):
            raise
        revision = 0  # another caller compacted to this revision already
    await asyncio.sleep(COMMIT_LAG)
    before = await spaces(client)
    defragmented = []
    for space in before:
        if to_defragment(space, quota, first or force):
            await client.defragment(space.endpoint)
            defragmented.append(space.endpoint)
    after = await spaces(client)
    disarm = should_disarm(after, quota)
    if disarm:
        for member in alarmed:
            await client.alarm_disarm(member)
    return Recovery(tuple(alarmed), revision, tuple(before), tuple(after),
                    tuple(defragmented), quota, disarm)
