"""A tmpfs mounted in a chosen mount namespace: where the agent keeps task secrets.

What it owns: mounting, finding and unmounting one tmpfs at a path *as some process sees
the filesystem* -- ours, or another process's (dockerd's), since a bind mount's source
is resolved in the mount namespace of whoever makes the bind mount. mount(2) cannot act
on another namespace, so there ``nsenter --mount`` runs ``mount``/``umount``, and files
are reached through ``/proc/<pid>/root``, which resolves paths in that namespace
(:func:`seen_from`). Whether a path is a tmpfs is read from ``/proc/<pid>/mountinfo``.

Never a fallback to the disk: a failure is :class:`TmpfsError`, and the caller refuses
to write what it would have put there.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Final

_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4
_MNT_DETACH: Final = 0x2
#: Swarm caps a secret or config at 500 KiB; 64 MiB holds a node's worth with room. Not
#: ``noexec``: a config may be a script the task runs (a health check, an entrypoint), and
#: a bind mount keeps the flags of the mount it comes from.
TMPFS_OPTIONS: Final = "mode=0700,size=64m"
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


def discard(root: Path, pids: Iterable[int | None]) -> bool:
    """Unmount ``root`` wherever it is mounted among the mount namespaces of ``pids``
    (None: ours), files and all; True if it was mounted somewhere."""
    found = False
    for pid in pids:
        if is_tmpfs(root, pid or "self"):
            unmount(root, pid)
            found = True
    return found


class TmpfsError(OSError):
    """The tmpfs cannot be mounted (not root, no nsenter, a namespace gone)."""


def is_tmpfs(path: Path, pid: int | str = "self") -> bool:
    """Is ``path`` itself the mount point of a tmpfs in the mount namespace of ``pid``?"""
    want = str(path)
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return False
    found = False
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields = head.split()
        if len(fields) > 4 and _unescape(fields[4]) == want:
            found = tail.split(" ", 1)[0] == "tmpfs"  # the last mount on a path wins
    return found


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def same_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return True  # no such process: ours is the only one we can use


def mount_tmpfs(path: Path, pid: int | None = None) -> None:
    """Mount a private tmpfs at ``path`` in the mount namespace of ``pid`` (None: ours)
    unless one is there already (a restarted agent finds its own)."""
    if is_tmpfs(path, pid or "self"):
        return
    if pid is None or same_mount_namespace(pid):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"shoal-taskfiles", str(path).encode(), b"tmpfs",
                      _MS_NOSUID | _MS_NODEV, TMPFS_OPTIONS.encode()) != 0:
            errno = ctypes.get_errno()
            raise TmpfsError(errno, f"cannot mount a tmpfs at {path}: {os.strerror(errno)}")
        return
    seen_from(path, pid).mkdir(mode=0o700, parents=True, exist_ok=True)
    _in_namespace(pid, "mount", "-t", "tmpfs", "-o", f"nosuid,nodev,{TMPFS_OPTIONS}",
                  "shoal-taskfiles", str(path))


def unmount(path: Path, pid: int | None = None) -> None:
    if pid is None or same_mount_namespace(pid):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot unmount {path}: {os.strerror(errno)}")
        return
    _in_namespace(pid, "umount", "-l", str(path))


def seen_from(path: Path, pid: int | None) -> Path:
    """``path`` of ``pid``'s mount namespace, as this process can open it."""
    if pid is None or same_mount_namespace(pid):
        return path
    return Path(f"/proc/{pid}/root") / path.relative_to("/")


def _in_namespace(pid: int, *argv: str) -> None:
    """Run ``argv`` in the mount namespace of ``pid`` (mount(2) cannot reach across)."""
    try:
        subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *argv], check=True,
                       capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise TmpfsError(0, f"{' '.join(argv)} in the mount namespace of pid {pid}: "
                            f"{str(detail).strip()}") from None
