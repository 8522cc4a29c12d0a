"""Find dockerd, or start it: the one helper ``swctl up``, the agent and the tests share.

Shoal only needs dockerd to run containers in network mode ``none``; the agent plumbs
task networking itself. So dockerd is started with ``--bridge=none --iptables=false
--ip-masq=false``: no ``docker0`` bridge, no NAT rules and, above all, no iptables
``FORWARD`` policy of ``DROP`` — which Docker installs when it manages iptables and which
would silently cut the traffic between the network-namespace nodes on Shoal's underlay
bridge and the nftables load balancer the agent programs.

The daemon is started detached (``setsid -f``: its own session, not our child, so it
outlives the caller like any system daemon and is reaped by init), logging to
``/var/log/shoal-dockerd.log``. A file lock makes concurrent callers — three agents of a
local cluster starting at once — start one daemon, not three. A daemon that does not
answer within the timeout is an error carrying the tail of its log, never a silent skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_URL = f"unix://{DEFAULT_SOCKET}"
DOCKERD_FLAGS: tuple[str, ...] = ("--bridge=none", "--iptables=false", "--ip-masq=false")
DEFAULT_LOG = Path("/var/log/shoal-dockerd.log")
_LOCK = Path("/run/shoal-dockerd.lock")


DEFAULT_PIDFILE = Path("/var/run/docker.pid")


def daemon_pid(pidfile: Path = DEFAULT_PIDFILE) -> int | None:
    """The pid of the running dockerd (its default ``--pidfile``), None if unknown.

    The agent mounts the tmpfs of its tasks' secrets in this process's mount namespace,
    which is where dockerd resolves a bind mount's source (docs/agent.md).
    """
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


class DockerdError(Exception):
    """dockerd is not reachable and could not be started; the message says why."""


def docker_url() -> str:
    """Where clients should find dockerd: ``$DOCKER_HOST`` or the standard socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_URL


def ping(url: str, timeout: float = 2.0) -> bool:
    """True when dockerd answers ``GET /_ping`` at ``url`` (unix:// or tcp://).

    Raw HTTP over a socket rather than the docker SDK: the SDK negotiates the API
    version on construction, which is slower and raises for a half-started daemon.
    """
    try:
        if url.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(url.removeprefix("unix://"))
        elif url.startswith(("tcp://", "http://")):
            host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]
    except (OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log at {path}: {exc})"


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    try:
        handle = open(_LOCK, "a+")  # held for the whole block, closed by the with below
    except OSError:
        # Not root or no /run: nothing to serialise against that could work anyway.
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_dockerd(timeout: float = 30.0, log_path: Path | str | None = None,
                   extra_args: Sequence[str] = ()) -> str:
    """The URL of a dockerd that answers, starting one in the background if needed.

    An already running daemon (``$DOCKER_HOST`` or the standard socket) is used as is,
    whatever its flags. Raises :class:`DockerdError` with the daemon's log tail when it
    cannot be started within ``timeout`` seconds.
    """
    url = docker_url()
    if ping(url):
        return url
    if url != DEFAULT_URL:
        raise DockerdError(f"DOCKER_HOST={url} does not answer, and Shoal only starts "
                           f"dockerd on {DEFAULT_URL}")
    logfile = Path(log_path) if log_path else DEFAULT_LOG
    with _start_lock():
        if ping(url):  # someone else started it while we waited for the lock
            return url
        # /usr/sbin may be missing from a non-login PATH; Debian installs dockerd there.
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")
        if dockerd is None:
            raise DockerdError("dockerd is not installed (apt-get install docker.io)")
        setsid = shutil.which("setsid")
        argv = [dockerd, *DOCKERD_FLAGS, f"--host={DEFAULT_URL}", *extra_args]
        if setsid:
            argv = [setsid, "-f", *argv]  # -f: fork, so dockerd is not our child
        logfile.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting dockerd", argv=argv, log=str(logfile))
        with open(logfile, "ab") as out:
            try:
                launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, close_fds=True,
                                            start_new_session=True)
            except OSError as exc:
                raise DockerdError(f"cannot run dockerd: {exc}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(url, timeout=1.0):
                if setsid:
                    launcher.wait(timeout=5)
                log.info("dockerd is up", url=url)
                return url
            if setsid is None and launcher.poll() is not None:
                break  # dockerd itself exited: no point waiting out the timeout
            time.sleep(0.1)
        if setsid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(timeout=1)
    raise DockerdError(f"dockerd did not answer on {url} within {timeout:.0f}s; "
                       f"last lines of {logfile}:\n{_log_tail(logfile)}")
