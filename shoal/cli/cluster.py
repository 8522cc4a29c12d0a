"""``swctl up`` and ``swctl down``: a local cluster of child processes under one state dir.

``up`` starts an etcd (data in ``STATE/etcd``) and the controller-manager, each in its own
session with its log in ``STATE/logs``, and records them in ``STATE/cluster.json`` as a
generic list of named processes (later issues append node agents to it; ``down`` stops
whatever the list holds, last started first). In the foreground ``up`` waits for Ctrl-C
and then stops everything; with ``-d`` it returns and leaves them running.

Processes are identified by pid *and* start time (from ``/proc``), so a stale
``cluster.json`` whose pids were reused by unrelated processes is never mistaken for a
running cluster, and ``down`` never signals a stranger.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shoal.cli import common, console, errors
from shoal.store import etcd_server

STATE_FILE = "cluster.json"
DEFAULT_ETCD_PORT = 2379
# How long a freshly started controller-manager must survive to count as running:
# long enough to import, connect to etcd and fail loudly if it is going to.
MANAGER_GRACE = 1.0
STOP_GRACE = 10.0


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "shoal"


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", parents=parents, help="start a local cluster (etcd + controller-manager)",
        description="Start a local cluster: an etcd with its data in the state dir and the "
                    "controller-manager. Runs until Ctrl-C, or in the background with -d.")
    _state_dir_flag(up)
    up.add_argument("-d", "--detach", action="store_true",
                    help="start in the background and return; stop with `swctl down`")
    up.add_argument("--etcd-port", type=int, default=DEFAULT_ETCD_PORT, metavar="N",
                    help=f"client port of the local etcd (default {DEFAULT_ETCD_PORT}; the "
                         "peer port is N+1 when free)")
    up.set_defaults(func=run_up, error_code=1)
    down = sub.add_parser(
        "down", parents=parents, help="stop the local cluster started by `swctl up`",
        description="Stop every process `swctl up` started from the state dir (SIGTERM, "
                    "then SIGKILL after a grace period). Data is kept unless --purge.")
    _state_dir_flag(down)
    down.add_argument("--purge", action="store_true",
                      help="also delete the state dir with the etcd data and logs")
    down.add_argument("--timeout", type=float, default=STOP_GRACE, metavar="SECONDS",
                      help=f"grace period before SIGKILL (default {STOP_GRACE:g})")
    down.set_defaults(func=run_down, error_code=1)


def _state_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                   help="where the cluster keeps data, logs and pids (default "
                        "$XDG_STATE_HOME/shoal, else ~/.local/state/shoal)")


# --- process records ---

def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Is ``pid`` running (not a zombie) and, when known, the process started then?"""
    if not Path("/proc").is_dir():  # no procfs: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or start_time(pid) == started


@dataclasses.dataclass
class Child:
    """One process ``up`` started; ``popen`` is set only in the process that started it."""

    name: str
    pid: int
    argv: list[str]
    log: str
    started: int | None = None
    popen: subprocess.Popen[bytes] | None = dataclasses.field(default=None, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid, self.started)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "argv": self.argv, "log": self.log,
                "startTime": self.started}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Child:
        return cls(name=str(data["name"]), pid=int(data["pid"]),
                   argv=[str(a) for a in data.get("argv") or []], log=str(data.get("log", "")),
                   started=data.get("startTime"))

    def stop(self, grace: float) -> bool:
        """SIGTERM its process group, SIGKILL after ``grace``; True if it had to be killed."""
        if not self.alive():
            return False
        self._signal(signal.SIGTERM)
        if self._wait(grace):
            return False
        self._signal(signal.SIGKILL)
        self._wait(5.0)
        return True

    def _signal(self, sig: signal.Signals) -> None:
        try:
            # Each child leads its own session, so its group holds anything it spawned.
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()


@dataclasses.dataclass
class ClusterState:
    """What ``STATE/cluster.json`` holds."""

    state_dir: Path
    etcd: str
    prefix: str
    detached: bool
    owner_pid: int
    processes: list[Child]
    # Set by `down` before it signals anything, so a foreground `up` watching its
    # children knows their deaths are a requested stop, not a crash.
    stopping: bool = False

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    def save(self) -> None:
        data = {"etcd": self.etcd, "prefix": self.prefix, "detached": self.detached,
                "ownerPid": self.owner_pid, "stopping": self.stopping,
                "processes": [c.record() for c in self.processes]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)  # atomic: a concurrent `down` never reads half a file

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise errors.CliError(f"cannot read {path}: {exc}; if no cluster is running, "
                                  "delete the file") from None
        return cls(state_dir=state_dir, etcd=str(data.get("etcd", "")),
                   prefix=str(data.get("prefix", common.DEFAULT_PREFIX)),
                   detached=bool(data.get("detached", True)),
                   owner_pid=int(data.get("ownerPid", 0)),
                   processes=[Child.from_record(p) for p in data.get("processes") or []],
                   stopping=bool(data.get("stopping", False)))

    def running(self) -> list[Child]:
        return [c for c in self.processes if c.alive()]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --- up ---

def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _log_tail(path: str, lines: int = 15) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    return ["  " + line for line in text.splitlines()[-lines:]]


def _start_etcd(state_dir: Path, port: int) -> Child:
    if not _port_free(port):
        raise errors.CliError(
            f"port {port} on 127.0.0.1 is already in use (another etcd?): start on another "
            f"port with --etcd-port N, or use the running etcd with --etcd "
            f"http://127.0.0.1:{port} instead of `swctl up`")
    peer = port + 1 if _port_free(port + 1) else etcd_server.free_port()
    log = state_dir / "logs" / "etcd.log"
    server = etcd_server.EtcdServer(state_dir / "etcd", client_port=port, peer_port=peer,
                                    log_path=log)
    argv = server.command()  # raises EtcdNotInstalledError with the apt-get hint
    try:
        server.start()
    except RuntimeError as exc:
        server.kill()
        raise errors.CliError([f"etcd did not start: {str(exc).splitlines()[0]}",
                               f"  log: {log}", *_log_tail(str(log))]) from None
    assert server.proc is not None
    return Child("etcd", server.proc.pid, argv, str(log), start_time(server.proc.pid),
                 popen=server.proc)


def start_process(name: str, argv: list[str], log: Path) -> Child:
    """Start ``argv`` in its own session (so terminal signals and our exit leave it be)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    return Child(name, proc.pid, argv, str(log), start_time(proc.pid), popen=proc)


def _start_manager(state: ClusterState) -> Child:
    log = state.state_dir / "logs" / "controller-manager.log"
    # `python -m shoal.cli` rather than the swctl script: works without PATH set up.
    argv = [sys.executable, "-m", "shoal.cli", "--etcd", state.etcd, "--prefix", state.prefix,
            "controller-manager"]
    child = start_process("controller-manager", argv, log)
    # Recorded before the grace period, so an interrupted `up` stops it too.
    state.processes.append(child)
    state.save()
    deadline = time.monotonic() + MANAGER_GRACE
    while time.monotonic() < deadline and child.alive():
        time.sleep(0.05)
    if not child.alive():
        code = child.popen.returncode if child.popen else "?"
        raise errors.CliError([f"the controller-manager exited at start-up (exit code {code})",
                               f"  log: {log}", *_log_tail(str(log))])
    return child


def _hints(state: ClusterState) -> list[str]:
    lines = []
    if state.etcd != common.DEFAULT_ETCD:
        lines.append(f"  export SHOAL_ETCD={state.etcd}")
    if state.prefix != common.DEFAULT_PREFIX:
        lines.append(f"  export SHOAL_PREFIX={state.prefix}")
    return [*lines, "  swctl apply -f deploy/examples/stack.yaml", "  swctl get services -A"]


def run_up(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    state_dir = (args.state_dir or default_state_dir()).absolute()
    existing = ClusterState.load(state_dir)
    if existing is not None:
        alive = existing.running()
        if alive:
            pids = ", ".join(f"{c.name} pid {c.pid}" for c in alive)
            console.out(f"a cluster from {state_dir} is already running (etcd at "
                        f"{existing.etcd}; {pids}); stop it with `swctl down --state-dir "
                        f"{state_dir}`")
            return 0
        existing.remove()  # left over from a cluster that died without `down`
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    # SIGTERM during start-up unwinds like Ctrl-C, through the clean-up below.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    url = f"http://127.0.0.1:{args.etcd_port}"
    state = ClusterState(state_dir, url, opts.prefix, args.detach, os.getpid(), [])
    try:
        with console.Spinner(f"starting etcd on port {args.etcd_port}"):
            state.processes.append(_start_etcd(state_dir, args.etcd_port))
        state.save()  # recorded at once, so `down` can clean up an interrupted `up`
        console.out(f"{console.OK} etcd ready at {url} (data in {state_dir / 'etcd'})")
        with console.Spinner("starting controller-manager"):
            manager = _start_manager(state)
        console.out(f"{console.OK} controller-manager running (pid {manager.pid})")
    except BaseException:
        _stop_all(state, STOP_GRACE, quiet=True)
        raise
    if args.detach:
        down = "swctl down" + ("" if args.state_dir is None else f" --state-dir {state_dir}")
        console.out("\n".join([f"Cluster running in the background (state and logs in "
                               f"{state_dir}). Try:", *_hints(state),
                               f"Stop it with `{down}`."]))
        return 0
    try:
        console.out("\n".join(["Cluster running. In another terminal:", *_hints(state),
                               "Press Ctrl-C to stop."]))
        return _wait_foreground(state)
    except BaseException:
        _stop_all(state, STOP_GRACE, quiet=True)  # never leave a foreground cluster behind
        raise


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_foreground(state: ClusterState) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    while not stop.wait(0.2):
        if _stopped_by_down(state):
            for child in reversed(state.processes):
                child.stop(STOP_GRACE)  # `down` is stopping them; reap our children
            console.out("cluster stopped by `swctl down`")
            return 0
        dead = [c for c in state.processes if not c.alive()]
        if dead:
            for c in dead:
                rc = c.popen.returncode if c.popen else "?"
                console.out(f"{console.FAIL} {c.name} exited unexpectedly (exit code {rc}); "
                            f"log: {c.log}")
            code = 1
            break
    _stop_all(state, STOP_GRACE)
    return code


def _stopped_by_down(state: ClusterState) -> bool:
    try:
        current = ClusterState.load(state.state_dir)
    except errors.CliError:
        return False
    return current is None or current.stopping


def _stop_all(state: ClusterState, grace: float, quiet: bool = False) -> None:
    for child in reversed(state.processes):  # agents, then controllers, then etcd
        was_alive = child.alive()
        killed = child.stop(grace)
        if was_alive and not quiet:
            how = " (killed after the grace period)" if killed else ""
            console.out(f"{console.OK} {child.name} stopped (pid {child.pid}){how}")
    state.remove()


# --- down ---

def run_down(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    state_dir = (args.state_dir or default_state_dir()).absolute()
    state = ClusterState.load(state_dir)
    if state is None or not state.running():
        console.out(f"no cluster is running from {state_dir}")
        if state is not None:
            state.remove()
    else:
        state.stopping = True
        state.save()
        with console.Spinner("stopping the cluster"):
            _stop_all(state, args.timeout)
    if args.purge and state_dir.exists():
        shutil.rmtree(state_dir)
        console.out(f"{console.OK} removed {state_dir} (etcd data and logs)")
    return 0
