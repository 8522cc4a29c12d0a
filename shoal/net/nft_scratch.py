"""An nftables table as this kernel holds it, written in a throw-away namespace to be read.

Why: adopting a table an earlier agent left (and judging drift without having written
anything) needs Shoal's chains, rules and set declarations *as the kernel dumps them*.
Shoal never encodes rules itself -- nft compiles them, and what it emits depends on nft's
and the kernel's versions -- so the reference is made the only faithful way: the same
script, applied by the same libnftables (or nft binary), read back over the same netlink
dump (:meth:`shoal.net.nftnl.NftNetlink.table_state`) as the real table. Writing it in the
node's namespace would be a write there (and a change every ``nft monitor`` shows); here
it goes to a namespace of its own, made by ``unshare(CLONE_NEWNET)`` on one dedicated
thread that stays in it and runs nothing else. The namespace lives as long as the process.

Results are cached per script: kernel and nft do not change under a running process.
``unshare`` needs CAP_SYS_ADMIN, as entering a task's namespace already does; where it is
refused, :func:`reference` returns None and callers fall back to writing their table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import threading
from collections import OrderedDict

from shoal.net import netns, nftnl
from shoal.net.nft import NftError, load_libnftables

CACHE_SIZE = 64  # scripts: a balancer asks again only when its set of lb chains changes

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_unavailable: str | None = None  # why the namespace could not be made, once it failed
_cache: OrderedDict[tuple[str, str], nftnl.TableState] = OrderedDict()
_local = threading.local()


def _enter_scratch() -> None:
    netns.unshare()
    _local.scratch = True


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="nft-scratch", initializer=_enter_scratch)
        return _pool


def _apply(script: str) -> None:
    """Run ``script`` in this (scratch) thread's namespace."""
    if not hasattr(_local, "lib"):
        _local.lib = load_libnftables()
    lib = _local.lib
    if lib is None:
        # A child forked from this thread starts in its namespace.
        done = subprocess.run(["nft", "-f", "-"], input=script.encode(),
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise NftError(done.stderr.decode().strip() or f"nft exited {done.returncode}")
        return
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
    if lib.nft_run_cmd_from_buffer(ctx, script.encode()) != 0:
        raise NftError((lib.nft_ctx_get_error_buffer(ctx) or b"").decode().strip())


def _read(family: str, table: str, script: str) -> nftnl.TableState:
    if not getattr(_local, "scratch", False):  # never the node's namespace
        raise RuntimeError("nft_scratch ran outside its throw-away namespace")
    _apply(f"table {family} {table} {{}}\ndelete table {family} {table}\n{script}")
    nl = nftnl.NftNetlink(None, table)
    try:
        state = nl.table_state()
    finally:
        nl.close()
    if state is None:
        raise NftError(f"the script made no table {family} {table}")
    return state


async def reference(family: str, table: str, script: str) -> nftnl.TableState | None:
    """Table ``family table`` as the kernel holds it once ``script`` (which creates it)
    ran in an empty namespace: its chains, rules and set declarations, no elements. None
    when no throw-away namespace can be made here. A script nft refuses raises
    :class:`NftError` (a bug in Shoal's rendering, never the node's state)."""
    global _unavailable
    key = (table, script)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    if _unavailable is not None:
        return None
    try:
        state = await asyncio.get_running_loop().run_in_executor(
            _executor(), _read, family, table, script)
    except concurrent.futures.BrokenExecutor as exc:
        _unavailable = str(exc)
        return None
    with _lock:
        _cache[key] = state
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return state


def unavailable() -> str | None:
    """Why no throw-away namespace could be made (None: it could, or was not tried)."""
    return _unavailable
