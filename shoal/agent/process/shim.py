"""The supervisor shim of the ``process`` driver: one tiny process per task.

Run as ``python -I -S shim.py DIR UID`` (standard library only, no site-packages,
so it starts in tens of milliseconds and works whatever the agent's environment). It is
to the process driver what containerd-shim is to Docker: the workload's parent, so that
the agent can die and restart without the workload noticing.

1. The launcher (the agent's child) forks the supervisor and exits at once, so the
   supervisor is re-parented to init and never becomes the agent's zombie.
2. The supervisor starts its own session, takes ``DIR/UID.lock`` (flock, held until it
   exits: "a supervisor for this task is alive", immune to pid reuse), starts the
   workload from ``DIR/UID.spec.json`` — in new network and UTS namespaces with
   loopback up (and a mount namespace holding its secrets and configs, if any), in its
   own session (so ``killpg`` reaches all its processes), with the sysctls, limits and
   capabilities ``privileges.py`` worked out, as the task's user,
   with the task's environment and working directory — records
   ``DIR/UID.json`` (pid and ``/proc`` start time), and answers the launcher's caller
   with one JSON line on stdout, which it then closes.
3. It copies the workload's stdout and stderr into ``DIR/UID.log`` in the CRI log format
   (``<RFC 3339 nano time> <stdout|stderr> <F|P> <text>``: one file keeps the order of
   the two streams, each line carries its timestamp, a ``P`` marks a partial line),
   rotating it to ``UID.log.1`` past a size limit.
4. When the workload exits it kills what remains of its process group (a container's
   processes all die with its init; so do a task's), writes ``DIR/UID.exit.json``
   (exit code, 128+signal when killed, as Docker reports it) and pokes the driver's
   datagram socket so the agent hears of the exit at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import grp
import json
import os
import pwd
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SECRETS_DIR = "/run/secrets"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
PARTIAL_LINE = 16 * 1024  # like Docker: longer lines are written in pieces marked P
DRAIN_SECONDS = 2.0  # how long to keep copying output after the workload died


def rfc3339_nano(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a live pid from /proc/PID/stat; None if there is no
    such process. The start time (field 22) is, with the pid, a process's identity."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid, the identity of a process."""
    found = proc_state(pid)
    return found[1] if found is not None else None


def alive(pid: int | None, starttime: int | None) -> bool:
    """Is the process we started still running (not a zombie, not a reused pid)?"""
    if not pid:
        return False
    found = proc_state(pid)
    if found is None or found[0] in ("Z", "X"):
        return False
    return starttime is None or found[1] == starttime


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object written by :func:`write_json`; None if absent or unreadable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: dict[str, Any]) -> None:
    """Atomically: readers see the old file or the new one, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve_user(user: str | None) -> tuple[int, int, list[int]] | None:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` -> (uid, gid, groups); None = keep."""
    if not user:
        return None
    name, _, group = user.partition(":")
    try:
        entry: Any = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        uid, gid, login = entry.pw_uid, entry.pw_gid, entry.pw_name
    except KeyError:
        if not name.isdigit():
            raise ValueError(f"unable to find user {name}: no matching entries in passwd "
                             f"file") from None
        uid, gid, login = int(name), int(name), None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"unable to find group {group}") from None
    groups = os.getgrouplist(login, gid) if login and not group else [gid]
    return uid, gid, groups


def _mount(libc: Any, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _mount_files(libc: Any, files: list[dict[str, str]]) -> None:
    """In the child's new mount namespace: each file bind-mounted read-only at its target.

    The task runs on the host's filesystem, so a mount point must exist there: secrets
    under /run/secrets get a tmpfs of their own there (only an empty /run/secrets is left
    on the host); any other target that does not exist is created as an empty file, the
    way dockerd creates a missing mount point in a container's root.
    """
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing leaks back to the host
    if any(f["target"].startswith(SECRETS_DIR + "/") for f in files):
        os.makedirs(SECRETS_DIR, mode=0o755, exist_ok=True)
        _mount(libc, "shoal-secrets", SECRETS_DIR, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for f in files:
        target = f["target"]
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
        _mount(libc, f["source"], target, None, MS_BIND)
        _mount(libc, None, target, None,
               MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _apply_privileges(libc: Any, granted: dict[str, Any]) -> None:
    """The template's sysctls, ulimits and dropped capabilities (see privileges.py), in
    the child, in that order: writing a sysctl or raising a limit may need a capability
    that is about to be dropped. Capabilities leave the bounding set, so nothing the task
    execs can regain them, and the inheritable and ambient sets."""
    for path, value in (granted.get("sysctls") or {}).items():
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as exc:
            key = path.removeprefix("/proc/sys/").replace("/", ".")
            raise OSError(exc.errno, f"sysctl {key}={value}: {exc.strerror}") from None
    for number, soft, hard in granted.get("rlimits") or []:
        try:
            resource.setrlimit(number, (soft, hard))
        except (OSError, ValueError) as exc:
            raise OSError(f"ulimit {number} soft {soft} hard {hard}: {exc}") from None
    drop = granted.get("drop_caps") or []
    if not drop:
        return
    for number in drop:
        if libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"dropping capability {number}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL before 4.3: none
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)  # two {effective, permitted, inheritable}
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    sets = list(struct.unpack("6I", data.raw))
    mask = sum(1 << n for n in drop)
    sets[2] &= ~mask & 0xFFFFFFFF
    sets[5] &= ~(mask >> 32) & 0xFFFFFFFF
    if libc.capset(header, struct.pack("6I", *sets)) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _enter_namespaces(spec: dict[str, Any], hostname: str,
                      user: tuple[int, int, list[int]] | None) -> None:
    """In the workload child, before exec: new netns + UTS ns (+ IPC ns for IPC
    sysctls, + mount ns for secrets and configs), the task's files mounted, lo up, the
    template's privileges, then drop to user.

    Runs after fork in a single-threaded process, so using ctypes and sockets is safe.
    Failures are written to the task's stderr (the log) and end the child with 126.
    """
    try:
        for sig in (signal.SIGHUP, signal.SIGINT):  # ignored by the supervisor only
            signal.signal(sig, signal.SIG_DFL)
        libc = ctypes.CDLL(None, use_errno=True)
        granted: dict[str, Any] = spec.get("privileges") or {}
        files: list[dict[str, str]] = spec.get("files") or []
        flags = (CLONE_NEWNET | CLONE_NEWUTS | (CLONE_NEWIPC if granted.get("new_ipc") else 0)
                 | (CLONE_NEWNS if files else 0))
        if libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET|CLONE_NEWUTS)")
        if files:
            _mount_files(libc, files)
        name = hostname.encode()[:64]
        if libc.sethostname(name, len(name)) != 0:
            raise OSError(ctypes.get_errno(), "sethostname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH14x", b"lo", 0)
            up = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", up | IFF_UP))
        _apply_privileges(libc, granted)
        if user is not None:
            uid, gid, groups = user
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"shoal: cannot start task: {exc}\n".encode())
        os._exit(126)


class LogWriter:
    """CRI-format log file with size-based rotation to ``.1``."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.size = os.fstat(self.fd).st_size
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, data: bytes) -> None:
        buffered = self.partial[stream] + data
        lines = buffered.split(b"\n")
        rest = lines.pop()
        out = [self._record(stream, b"F", line) for line in lines]
        while len(rest) >= PARTIAL_LINE:
            out.append(self._record(stream, b"P", rest[:PARTIAL_LINE]))
            rest = rest[PARTIAL_LINE:]
        self.partial[stream] = rest
        self._write(b"".join(out))

    def flush_partial(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._write(self._record(stream, b"F", rest))
                self.partial[stream] = b""

    def _record(self, stream: str, tag: bytes, line: bytes) -> bytes:
        stamp = rfc3339_nano(time.time_ns()).encode()
        return b"%s %s %s %s\n" % (stamp, stream.encode(), tag, line)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.max_bytes and self.size + len(data) > self.max_bytes and self.size:
            os.close(self.fd)
            os.replace(self.path, f"{self.path}.1")
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self.size = 0
        os.write(self.fd, data)
        self.size += len(data)


def _notify(socket_path: str | None, uid: str) -> None:
    if not socket_path:
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(uid.encode(), socket_path)


def _exit_status(status: int) -> tuple[int, int | None]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.waitstatus_to_exitcode(status), None


def supervise(directory: str, uid: str) -> int:
    base = os.path.join(directory, uid)
    with open(f"{base}.spec.json") as f:
        spec: dict[str, Any] = json.load(f)
    lock = os.open(f"{base}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    # A driver probing "is a supervisor alive?" holds the lock for microseconds; a
    # supervisor holds it for life. Wait out the former, give way to the latter.
    deadline = time.monotonic() + 0.2
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                return _answer({"status": "busy"})  # another supervisor owns the task
            time.sleep(0.02)
    if os.path.exists(f"{base}.json"):
        return _answer({"status": "exists"})  # a previous run: never start twice

    log = LogWriter(spec["log"], int(spec.get("log_max_bytes") or 0))
    started_ns = time.time_ns()
    try:
        user = resolve_user(spec.get("user"))
        child = subprocess.Popen(
            spec["argv"], env=spec["env"], cwd=spec.get("cwd") or "/",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True,
            preexec_fn=lambda: _enter_namespaces(spec, spec.get("hostname") or uid[:12],
                                                 user))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        argv0 = spec["argv"][0] if spec["argv"] else ""
        error = (f'exec: "{argv0}": executable file not found in $PATH' if code == 127
                 else f"cannot start {argv0!r}: {exc}")
        write_json(f"{base}.json", {"pid": None, "starttime": None, "started_at":
                                    started_ns / 1e9, "supervisor_pid": os.getpid()})
        write_json(f"{base}.exit.json", {"exit_code": code, "signal": None,
                                         "finished_at": time.time(), "error": error})
        log.feed("stderr", f"shoal: {error}\n".encode())
        _answer({"status": "failed", "error": error})
        _notify(spec.get("events_socket"), uid)
        return 0
    pid = child.pid
    write_json(f"{base}.json", {
        "pid": pid, "starttime": proc_starttime(pid), "started_at": started_ns / 1e9,
        "supervisor_pid": os.getpid(), "supervisor_starttime": proc_starttime(os.getpid()),
    })
    _answer({"status": "started", "pid": pid})

    assert child.stdout is not None and child.stderr is not None
    selector = selectors.DefaultSelector()
    pidfd = os.pidfd_open(pid)
    selector.register(child.stdout.fileno(), selectors.EVENT_READ, "stdout")
    selector.register(child.stderr.fileno(), selectors.EVENT_READ, "stderr")
    selector.register(pidfd, selectors.EVENT_READ, "exit")
    status: int | None = None
    drain_until: float | None = None
    open_pipes = 2
    while open_pipes:
        timeout = None if drain_until is None else max(0.0, drain_until - time.monotonic())
        events = selector.select(timeout)
        if not events and drain_until is not None:
            break  # the workload's descendants escaped killpg and still hold a pipe
        for key, _ in events:
            if key.data == "exit":
                selector.unregister(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)  # the rest of the task dies with it
                drain_until = time.monotonic() + DRAIN_SECONDS
                continue
            data = os.read(key.fd, 65536)
            if data:
                log.feed(key.data, data)
            else:
                selector.unregister(key.fd)
                open_pipes -= 1
    if status is None:
        _, status = os.waitpid(pid, 0)
    log.flush_partial()
    code, sig = _exit_status(status)
    write_json(f"{base}.exit.json", {"exit_code": code, "signal": sig,
                                     "finished_at": time.time(), "error": ""})
    _notify(spec.get("events_socket"), uid)
    return 0


def _answer(message: dict[str, Any]) -> int:
    """The one line the driver waits for; then stdout goes, so its pipe reaches EOF."""
    with contextlib.suppress(OSError):
        os.write(1, (json.dumps(message) + "\n").encode())
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return 0


def main(argv: list[str]) -> int:
    directory, uid = argv[1], argv[2]
    if os.fork():
        return 0  # the launcher: the caller reaps it, init adopts the supervisor
    os.setsid()
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    shim_log = os.open(os.path.join(directory, f"{uid}.shim.log"),
                       os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(shim_log, 2)
    os.close(shim_log)
    try:
        return supervise(directory, uid)
    except BaseException as exc:
        _answer({"status": "failed", "error": f"supervisor: {exc!r}"})
        raise


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    os._exit(code)
