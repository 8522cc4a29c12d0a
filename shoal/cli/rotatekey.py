"""``swctl secret rotate-key``: a new key seals every Secret, then the old keys go.

Three steps, each safe to be killed after:

1. the keyring file gains a new primary key (``Keyring.with_new_primary``), written
   atomically (``sealed.save``); the old keys stay, so every stored Secret still opens.
   Run again after a kill, a ring that already holds more than one key is a rotation
   under way: its primary is kept, not replaced;
2. every Secret of every namespace sealed under another key is opened and sealed again
   under the primary, one compare-and-swap write each (a Secret changed meanwhile is
   read again; one deleted meanwhile is skipped). Only ``spec.sealed`` changes: the
   digest key is kept, so ``dataDigest`` -- and with it every service -- stays as it is;
3. only when a fresh list shows no Secret left under an old key are the old keys
   dropped from the file.

The keyring is a file on each machine that seals or opens values (``swctl`` and every
agent); before step 3, every agent must have the new file (``swctl up`` shares one file,
so there is nothing to copy there). docs/secrets.md says how to do it by hand.
"""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli import common, console, errors, keyring
from shoal.crds import kinds, resource, sealed, secretdata
from shoal.store import client
from shoal.store import errors as store_errors

CONFLICT_ATTEMPTS = 8


def add_parser(verbs: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser(
        "rotate-key", parents=parents, help="seal every secret under a new key",
        description="Add a new primary key to the cluster keyring, re-seal every secret "
                    "with it, then drop the old keys. Values, digests and services are "
                    "unchanged. Safe to run again if interrupted.")
    p.set_defaults(func=run, error_code=1)


def _old_keys(ring: sealed.Keyring) -> list[str]:
    return sorted(k for k in ring.keys if k != ring.primary)


async def reseal_all(store: client.Store, info: kinds.KindInfo,
                     ring: sealed.Keyring) -> int:
    """Seal again, under ``ring.primary``, every Secret sealed under another key."""
    secrets, _ = await store.list(info)
    count = 0
    for obj in secrets:
        if await _reseal(store, info, ring, obj):
            count += 1
    return count


async def _reseal(store: client.Store, info: kinds.KindInfo, ring: sealed.Keyring,
                  obj: resource.Resource) -> bool:
    namespace = obj.namespace or resource.DEFAULT_NAMESPACE
    for _ in range(CONFLICT_ATTEMPTS):
        box = obj.spec.get(secretdata.SEALED)
        if not isinstance(box, dict) or box.get("key") == ring.primary:
            return False
        try:
            raw = ring.open(box, namespace, obj.name)
        except sealed.SealError as exc:
            raise errors.CliError(f"{exc}; nothing else was changed by this run, the old "
                                  "keys are kept") from None
        new = obj.deepcopy()
        new.spec[secretdata.SEALED] = ring.seal(raw, namespace, obj.name)
        try:
            await store.update(info, new)
            return True
        except store_errors.ConflictError:
            try:
                obj = await store.get(info, obj.name, namespace)
            except store_errors.NotFoundError:
                return False
    raise errors.CliError(f'gave up re-sealing secret "{obj.name}" in namespace '
                          f'"{namespace}": it keeps changing; run rotate-key again')


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    source = keyring.Source.of(opts)
    ring = source.get()
    if _old_keys(ring):
        console.out(f"continuing a rotation under way: primary key {ring.primary}")
    else:
        ring = ring.with_new_primary()
        sealed.save(ring, source.path)
        console.out(f"new primary key {ring.primary} in {source.path}")
    async with common.open_store(opts) as store:
        info = (await common.registry_of(store)).lookup("secrets")
        count = await reseal_all(store, info, ring)
        console.out(f"re-sealed {count} secret{'s' if count != 1 else ''}")
        # Step 3 only on proof: a fresh read, in case a writer with an old copy of the
        # ring sealed something under an old key meanwhile.
        left, _ = await store.list(info)
        stale = [o for o in left if isinstance(o.spec.get(secretdata.SEALED), dict)
                 and o.spec[secretdata.SEALED].get("key") != ring.primary]
    if stale:
        names = ", ".join(f"{o.namespace}/{o.name}" for o in stale[:5])
        raise errors.CliError(f"{len(stale)} secrets are still sealed under an old key "
                              f"({names}); the old keys are kept: run rotate-key again")
    dropped = _old_keys(ring)
    sealed.save(ring.only_primary(), source.path)
    console.out(f"dropped old key{'s' if len(dropped) != 1 else ''} {', '.join(dropped)}")
    return 0
