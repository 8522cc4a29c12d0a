"""Run nftables scripts in a given network namespace, fast.

Two ways, same contract (``await run(script)``, raising :class:`NftError` with nft's own
message): libnftables through ctypes -- the library ``nft`` itself is a thin wrapper of,
installed with nftables as ``libnftables.so.1`` -- on a dedicated thread that has entered
the namespace; or the ``nft`` binary under ``nsenter``. The library saves a process spawn
and lets the context keep its ruleset cache warm, which is what keeps a one-service change
on a 10,000-service table within its time budget (bench/dataplane.py measures both). The
binary is the fallback when the library cannot be loaded. Debian's python3-nftables
bindings wrap the same library for the system Python only, so they are not used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import shutil
import threading
from typing import Literal

from shoal.net import netns as netns_mod

RunnerKind = Literal["lib", "exec"]


class NftError(RuntimeError):
    """nft rejected a script; the message is nft's, with the failing lines."""




def load_libnftables() -> ctypes.CDLL | None:
    """libnftables through ctypes, with the prototypes Shoal uses; None when absent."""
    for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        return lib
    return None


class NftRunner:
    """Runs scripts in one namespace (None: the current one). ``kind`` forces a method."""

    def __init__(self, netns: str | None = None, kind: RunnerKind | None = None) -> None:
        self.netns = netns
        self._lib = load_libnftables() if kind in (None, "lib") else None
        if kind == "lib" and self._lib is None:
            raise NftError("libnftables.so.1 cannot be loaded")
        if self._lib is None and shutil.which("nft") is None:
            raise NftError("neither libnftables nor the nft binary is available; "
                           "install the nftables package")
        self.kind: RunnerKind = "lib" if self._lib is not None else "exec"
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ctx: int | None = None
        self._lock = threading.Lock()

    # ---- library path --------------------------------------------------------------------

    def _thread_init(self) -> None:
        # A network namespace is per thread: this worker enters it once and stays, so the
        # event loop's thread never changes namespace.
        if self.netns is not None:
            netns_mod.enter(netns_mod.path(self.netns))

    def _run_lib(self, script: str) -> str:
        lib = self._lib
        assert lib is not None
        with self._lock:
            if self._ctx is None:
                ctx = lib.nft_ctx_new(0)
                if not ctx:
                    raise NftError("nft_ctx_new failed")
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                self._ctx = ctx
            rc = lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with {rc}")
        return out

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="nft", initializer=self._thread_init)
        return self._pool

    # ---- binary path ---------------------------------------------------------------------

    async def _run_exec(self, script: str) -> str:
        argv = ["nft", "-f", "-"]
        if self.netns is not None:
            argv = ["nsenter", f"--net={netns_mod.path(self.netns)}", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(script.encode())
        if proc.returncode != 0:
            raise NftError(err.decode().strip() or f"nft exited {proc.returncode}")
        return out.decode()

    # ---- public --------------------------------------------------------------------------

    async def run(self, script: str) -> str:
        if self.kind == "lib":
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor(), self._run_lib, script)
        return await self._run_exec(script)

    def run_sync(self, script: str) -> str:
        """For callers without a loop (tests, tools); same semantics as :meth:`run`."""
        if self.kind == "lib":
            return self._executor().submit(self._run_lib, script).result()
        return asyncio.run(self._run_exec(script))

    def close(self) -> None:
        if self._pool is not None:
            if self._ctx is not None and self._lib is not None:
                ctx, lib = self._ctx, self._lib
                self._pool.submit(lib.nft_ctx_free, ctx).result()
                self._ctx = None
            self._pool.shutdown(wait=True)
            self._pool = None
