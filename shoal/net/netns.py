"""Network namespaces by name or path; entering one from one thread, running a call there.

A socket belongs to the namespace it was created in, and ``setns`` moves only the calling
thread; so the dataplane never moves its event loop's thread: a worker thread enters the
namespace (for good, or for one call) and creates or uses its sockets there. This is the
one place that calls ``setns``; the IPVS netlink sockets, the libnftables worker and the
UML test guest all go through it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


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
