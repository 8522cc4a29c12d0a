"""Network namespaces by name or path; entering one from one thread, running a call there.

A socket belongs to the namespace it was created in, and ``setns`` moves only the calling
thread; so the dataplane never moves its event loop's thread: a worker thread enters the
namespace (for good, or for one call) and creates or uses its sockets there. This is the
one place that calls ``setns`` (and ``unshare``, for nft_scratch's throw-away namespace);
the IPVS netlink sockets, the overlay's rtnetlink sockets (``rtnl_socket``), the
libnftables worker and the UML test guest all go through it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
NETLINK_BUFFER = 1 << 20  # bytes each way, what pyroute2 gives the sockets it makes


def path(netns: str) -> str:
    """The file of a namespace given as a path (``/proc/PID/ns/net``) or a name (``ip
    netns``'s, under /var/run/netns)."""
    return netns if "/" in netns else f"/var/run/netns/{netns}"


def enter(path: str) -> None:
    """Move the calling thread (only) into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def unshare() -> None:
    """Move the calling thread (only) into a new, empty network namespace of its own; it
    goes away with the last thread or socket in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare of the network namespace: {os.strerror(err)}")


def run_in(path: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` inside the namespace at ``path`` (None: right here), on a short-lived
    thread that enters it; the caller never moves."""
    if path is None:
        return fn()
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter(path)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name="netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


async def rtnl_socket(netns: str) -> socket.socket:
    """An rtnetlink socket of the namespace ``netns`` (a name or path), for
    ``AsyncIPRoute(use_socket=...)``; the caller closes it.

    Why not ``AsyncIPRoute(netns=...)``: pyroute2 makes that socket in a forked child, and
    synchronously, on the first request -- inside the agent's event loop. A fork of the
    agent (a large heap, gRPC threads) took 20-35 ms on this 2-core host, with every other
    coroutine stalled meanwhile, once per task namespace per dataplane pass: 16 % of the
    agent's loop while a 30-service stack started (bench/stack.py). A thread entering
    the namespace makes the same socket in 2-3 ms, off the loop."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, NETLINK_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_BUFFER)
        return sock

    return await asyncio.to_thread(run_in, path(netns), make)


async def run_command(netns: str | None, *argv: str, stdin: str | None = None) -> str:
    """Run a command-line tool (``iptables-save``, ``nft -f -``) in the namespace ``netns``
    (a name or path; None: right here) through ``nsenter``; its stdout, or RuntimeError
    carrying its stderr. Tools, unlike sockets, need the whole process in the namespace,
    so they run as a child that nsenter moves there, not on a thread."""
    if netns is not None:
        argv = ("nsenter", f"--net={path(netns)}", *argv)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err.decode().strip()}")
    return out.decode()


async def set_sysctl(netns: str | None, name: str, value: str) -> bool:
    """Set sysctl ``name`` (``net/ipv4/ip_forward``) in the namespace ``netns`` (None:
    right here) unless it already holds ``value``; True when it changed. /proc/sys/net
    shows the namespace of the process that opens it, so another namespace's is set by
    ``sysctl`` run inside it (``run_command``)."""
    if netns is None:
        return await asyncio.to_thread(_write_if_different, Path("/proc/sys") / name, value)
    if (await run_command(netns, "sysctl", "-n", name)).strip() == value:
        return False
    await run_command(netns, "sysctl", "-qw", f"{name}={value}")
    return True


def _write_if_different(path: Path, value: str) -> bool:
    if path.read_text().strip() == value:
        return False
    path.write_text(value)
    return True
