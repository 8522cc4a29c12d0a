"""``swctl up`` and ``swctl down``: a local cluster of child processes under one state dir.

``up`` makes the cluster's keyring (``STATE/keyring.json``, mode 0600: secrets are
sealed under it, and every agent gets ``--keyring`` to open them), starts an etcd (data
in ``STATE/etcd``), the controller-manager and the node agents, each in its own session
with its log in ``STATE/logs``, and records them in ``STATE/cluster.json`` as a generic
list of named processes (``down`` stops whatever the list holds, last started first). In
the foreground ``up`` waits for Ctrl-C and then stops everything; with ``-d`` it returns
and leaves them running.

Agents (``plan_agents``): by default one local node named after the host, running tasks
with the ``docker`` driver when a dockerd answers (or can be started), otherwise with the
``process`` driver and a notice saying so; ``--hollow-nodes N`` instead starts one agent
process serving N simulated nodes; ``--no-agent`` starts none (agents join from
elsewhere); ``--nodes N`` builds N network-namespace nodes on one underlay bridge, each
running its own agent (``netnodes``). ``up`` waits until the agents' nodes report ready.

``down`` also removes what the cluster left besides processes (``leftovers``): the
workloads of its nodes (containers by their ``shoal.io/node`` label, process-driver
tasks) and the namespaces and bridge of ``--nodes``, all recorded in ``cluster.json``.

Processes are identified by pid *and* start time (from ``/proc``), so a stale
``cluster.json`` whose pids were reused by unrelated processes is never mistaken for a
running cluster, and ``down`` never signals a stranger.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.cli import common, console, converge, errors, leftovers, netnodes
from shoal.crds import sealed
from shoal.store import client, etcd_server

STATE_FILE = "cluster.json"
DEFAULT_ETCD_PORT = 2379
# How long a freshly started controller-manager must survive to count as running:
# long enough to import, connect to etcd and fail loudly if it is going to.
MANAGER_GRACE = 1.0
STOP_GRACE = 10.0
# How long `up` waits for the agents' nodes to report ready before warning.
NODES_READY_TIMEOUT = 20.0
HOLLOW_AGENT_NAME = "hollow"



def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", parents=parents, help="start a local cluster (etcd, controllers, a node)",
        description="Start a local cluster: an etcd with its data in the state dir, the "
                    "controller-manager and a node agent (docker runtime when dockerd is "
                    "available, else process; or --hollow-nodes N simulated nodes). Runs "
                    "until Ctrl-C, or in the background with -d.")
    _state_dir_flag(up)
    up.add_argument("-d", "--detach", action="store_true",
                    help="start in the background and return; stop with `swctl down`")
    up.add_argument("--etcd-port", type=int, default=DEFAULT_ETCD_PORT, metavar="N",
                    help=f"client port of the local etcd (default {DEFAULT_ETCD_PORT}; the "
                         "peer port is N+1 when free)")
    nodes = up.add_mutually_exclusive_group()
    nodes.add_argument("--hollow-nodes", type=_positive, metavar="N",
                       help="instead of the local node, N simulated nodes (hollow-0..N-1) "
                            "served by one agent process, for trying scheduling at scale")
    nodes.add_argument("--runtime", choices=("auto", "docker", "process"), default="auto",
                       help="how the local node runs tasks (default auto: docker when dockerd "
                            "answers or can be started, else process)")
    nodes.add_argument("--no-agent", action="store_true",
                       help="start no node agent (nodes join with `swctl agent`)")
    netnodes.add_flags(up)
    up.add_argument("--managers", type=_positive, default=None, metavar="M",
                    help="with --nodes: build the cluster as machines do, `swctl init` in "
                         "the first node and `swctl join` in the others, M of them managers "
                         "(etcd members with TLS; docs/cluster.md)")
    up.set_defaults(func=run_up, error_code=1)
    down = sub.add_parser(
        "down", parents=parents, help="stop the local cluster started by `swctl up`",
        description="Stop every process `swctl up` started from the state dir (SIGTERM, "
                    "then SIGKILL after a grace period). Data is kept unless --purge.")
    _state_dir_flag(down)
    down.add_argument("--purge", action="store_true",
                      help="also delete the state dir with the etcd data and logs")
    down.add_argument("--timeout", type=converge.seconds_arg, default=STOP_GRACE,
                      metavar="SECONDS",
                      help=f"grace period before SIGKILL (default {STOP_GRACE:g})")
    down.set_defaults(func=run_down, error_code=1)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'invalid count "{text}": expected a whole number '
                                         ">= 1")
    return value


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
    # Nodes whose workloads (containers, process tasks) `down` removes, and the
    # `--nodes` underlay (netnodes.Underlay.record()) it tears down.
    nodes: list[str] = dataclasses.field(default_factory=list)
    underlay: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def keyring(self) -> Path:
        """The cluster's keyring (crds/sealed.py): beside its etcd data, never in it."""
        return self.state_dir / sealed.KEYRING_FILE

    def save(self) -> None:
        data = {"etcd": self.etcd, "prefix": self.prefix, "detached": self.detached,
                "ownerPid": self.owner_pid, "stopping": self.stopping,
                "processes": [c.record() for c in self.processes],
                "nodes": self.nodes, "underlay": self.underlay}
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
                   stopping=bool(data.get("stopping", False)),
                   nodes=[str(n) for n in data.get("nodes") or []],
                   underlay=data.get("underlay") or None)

    def running(self) -> list[Child]:
        return [c for c in self.processes if c.alive()]

    def has_leftovers(self) -> bool:
        return bool(self.nodes or self.underlay)

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


def _start_etcd(state: ClusterState, port: int, extra_hosts: tuple[str, ...] = ()) -> Child:
    if not _port_free(port):
        raise errors.CliError(
            f"port {port} on 127.0.0.1 is already in use (another etcd?): start on another "
            f"port with --etcd-port N, or use the running etcd with --etcd "
            f"http://127.0.0.1:{port} instead of `swctl up`")
    peer = port + 1 if _port_free(port + 1) else etcd_server.free_port()
    log = state.state_dir / "logs" / "etcd.log"
    server = etcd_server.EtcdServer(state.state_dir / "etcd", client_port=port,
                                    peer_port=peer, log_path=log, extra_hosts=extra_hosts)
    argv = server.command()  # raises EtcdNotInstalledError with the apt-get hint
    child = start_process("etcd", argv, log)
    # Recorded before waiting for it: an `up` killed meanwhile leaves no etcd behind.
    state.processes.append(child)
    state.save()
    server.proc = child.popen
    try:
        server.wait_ready()
    except RuntimeError as exc:
        raise errors.CliError([f"etcd did not start: {str(exc).splitlines()[0]}",
                               f"  log: {log}", *_log_tail(str(log))]) from None
    return child


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
    _survives_start(child, "controller-manager", log)
    return child


# --- agents ---

@dataclasses.dataclass
class AgentPlan:
    """One agent process ``up`` starts: its name in cluster.json, the agent's own flags
    (after ``swctl agent``), the nodes it will register, and how to describe it."""

    name: str
    flags: list[str]
    nodes: list[str]
    summary: str
    # Runs the agent somewhere else, e.g. inside a node's namespace (netnodes.agent_argv).
    wrap: Callable[[list[str]], list[str]] | None = None
    etcd: str | None = None  # the etcd URL as the agent reaches it (default: state.etcd)
    workloads: bool = True  # its nodes run real workloads that `down` must remove


def _notice(text: str) -> None:
    console.out(f"! {text}")


def _local_runtime(choice: str) -> str:
    """``docker`` if a dockerd answers or can be started (and then the test image is made
    sure of), else ``process`` with a notice. An explicit ``--runtime docker`` that cannot
    be honoured is an error instead. The choice itself is ``runtimes.choose``, the one
    ``swctl agent`` makes too."""
    from shoal.agent import runtimes

    try:
        if choice == "process":
            picked = runtimes.choose(choice)
        else:
            with console.Spinner("looking for dockerd (starting it if needed)"):
                picked = runtimes.choose(choice)
    except runtimes.RuntimeUnavailable as exc:
        raise errors.CliError(str(exc)) from None
    if picked.fallback:
        _notice(f"{picked.fallback}; tasks run with the process runtime instead (pass "
                "--runtime docker to insist)")
    if picked.docker_url is not None:
        console.out(f"{console.OK} dockerd ready at {picked.docker_url}")
        _ensure_image(picked.docker_url)
    return picked.runtime


def _ensure_image(url: str) -> None:
    """Make sure the example image exists; a failure is a notice, not fatal: services
    with other, present images still run."""
    try:
        from shoal.agent.docker import image
    except ImportError as exc:
        _notice(f"cannot check the test image ({exc})")
        return
    try:
        with console.Spinner(f"making sure the image {image.TEST_IMAGE} exists"):
            built = image.ensure_test_image_at(url)
    except Exception as exc:  # any docker/build failure: tell, and carry on
        _notice(f"could not build the image {image.TEST_IMAGE}: {exc}; services using it "
                "will be rejected until it exists (python -m shoal.agent.docker.image)")
        return
    console.out(f"{console.OK} image {image.TEST_IMAGE} "
                f"{'built' if built else 'present'}")


def plan_agents(args: argparse.Namespace, state: ClusterState) -> list[AgentPlan]:
    """The agents ``up`` starts, by flag.

    ``--nodes N``: ``run_up`` has built the namespaces and bridge (``_build_underlay``,
    before etcd, which must listen on the bridge) and recorded them in ``state.underlay``;
    here each namespace gets an AgentPlan with its ``--address``, started inside it
    (``AgentPlan.wrap``) and pointed at etcd's bridge address (``AgentPlan.etcd``).
    ``down`` removes the underlay and the nodes' workloads (``leftovers``).
    """
    if args.no_agent:
        return []
    if state.underlay is not None:
        return _netnode_plans(args, netnodes.Underlay.from_record(state.underlay))
    if args.hollow_nodes:
        count = args.hollow_nodes
        names = [f"{HOLLOW_AGENT_NAME}-{i}" for i in range(count)]
        return [AgentPlan(HOLLOW_AGENT_NAME,
                          ["--runtime", "hollow", "--count", str(count), "--name",
                           HOLLOW_AGENT_NAME], names,
                          f"{count} hollow node{'s' if count != 1 else ''}",
                          workloads=False)]
    host = socket.gethostname()
    runtime = _local_runtime(args.runtime)
    return [AgentPlan(f"agent-{host}", ["--runtime", runtime, "--name", host, "--role",
                                        "manager"], [host],
                      f"node {host}, runtime {runtime}")]


def _netnode_plans(args: argparse.Namespace, underlay: netnodes.Underlay) -> list[AgentPlan]:
    """One agent per namespace node, started inside it; the first node is a manager,
    as the first node of a Swarm is."""
    runtime = _local_runtime(args.runtime)
    etcd = underlay.etcd_url(args.etcd_port)
    plans = []
    for i, node in enumerate(underlay.nodes):
        role = "manager" if i == 0 else "worker"
        plans.append(AgentPlan(
            f"agent-{node.name}",
            ["--runtime", runtime, "--name", node.name, "--address", node.address,
             "--role", role], [node.name],
            f"node {node.name} at {node.address}, runtime {runtime}",
            wrap=functools.partial(netnodes.agent_argv, node), etcd=etcd))
    return plans


def _build_underlay(args: argparse.Namespace, state: ClusterState) -> netnodes.Underlay:
    """``--nodes N``: the bridge and N namespaces, recorded in cluster.json *before*
    each is made, so an interrupted ``up`` leaves nothing ``down`` cannot find."""
    if args.hollow_nodes or args.no_agent:
        raise errors.CliError("--nodes cannot be combined with --hollow-nodes or --no-agent")
    try:
        netnodes.require_root()
        underlay = netnodes.plan(args.nodes, args.underlay, args.bridge, args.node_prefix)
        netnodes.check_free(underlay)
        state.underlay = underlay.record()
        state.save()
        netnodes.build_bridge(underlay)
        for problem in netnodes.open_firewall(underlay):
            _notice(f"host firewall: {problem}; traffic between the nodes may be dropped")
        for node in underlay.nodes:
            netnodes.build_node(underlay, node)
    except netnodes.NetNodesError as exc:
        raise errors.CliError(f"cannot build {args.nodes} nodes: {exc}") from None
    return underlay


def _start_agent(state: ClusterState, plan: AgentPlan) -> Child:
    log = state.state_dir / "logs" / f"{plan.name}.log"
    argv = [sys.executable, "-m", "shoal.cli", "--etcd", plan.etcd or state.etcd,
            "--prefix", state.prefix, "agent", "--keyring", str(state.keyring), *plan.flags]
    if plan.wrap is not None:
        argv = plan.wrap(argv)
    if plan.workloads:
        # Recorded before the agent can start anything, so `down` removes what it runs.
        state.nodes += [n for n in plan.nodes if n not in state.nodes]
    child = start_process(plan.name, argv, log)
    state.processes.append(child)
    state.save()
    return child


def _survives_start(child: Child, what: str, log: Path) -> None:
    deadline = time.monotonic() + MANAGER_GRACE
    while time.monotonic() < deadline and child.alive():
        time.sleep(0.05)
    if not child.alive():
        code = child.popen.returncode if child.popen else "?"
        raise errors.CliError([f"the {what} exited at start-up (exit code {code})",
                               f"  log: {log}", *_log_tail(str(log))])


async def _ready_nodes(etcd: str, prefix: str, names: list[str], timeout: float) -> set[str]:
    """Poll until every node in ``names`` reports ready; returns those that did."""
    from shoal.crds import kinds

    info = kinds.Registry.builtin().lookup("nodes")
    store = await client.Store.connect(etcd, prefix=prefix)
    try:
        deadline = time.monotonic() + timeout
        while True:
            nodes, _ = await store.list(info)
            ready = {n.name for n in nodes if n.status.get("state") == "ready"} & set(names)
            if len(ready) == len(set(names)) or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(0.1)
    finally:
        await store.close()


def _wait_nodes(state: ClusterState, plans: list[AgentPlan], timeout: float) -> None:
    names = [n for p in plans for n in p.nodes]
    if not names:
        return
    with console.Spinner(f"waiting for {len(names)} node{'s' if len(names) > 1 else ''}"):
        ready = asyncio.run(_ready_nodes(state.etcd, state.prefix, names, timeout))
    missing = [n for n in names if n not in ready]
    if not missing:
        what = f"node {names[0]}" if len(names) == 1 else f"{len(names)} nodes"
        console.out(f"{console.OK} {what} ready")
        return
    logs = ", ".join(str(state.state_dir / "logs" / f"{p.name}.log") for p in plans)
    _notice(f"{len(missing)} of {len(names)} nodes not ready after {timeout:g}s "
            f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); see {logs}")


def _hints(state: ClusterState) -> list[str]:
    lines = []
    if state.etcd != common.DEFAULT_ETCD:
        lines.append(f"  export SHOAL_ETCD={state.etcd}")
    if state.prefix != common.DEFAULT_PREFIX:
        lines.append(f"  export SHOAL_PREFIX={state.prefix}")
    if state.keyring != common.keyring_path(None):
        lines.append(f"  export {sealed.KEYRING_ENV}={state.keyring}")
    return [*lines, "  swctl node ls",
            "  swctl stack deploy -c deploy/examples/docker-stack.yml demo",
            "  swctl get services -A"]


def run_up(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    state_dir = (args.state_dir or common.default_state_dir()).absolute()
    existing = ClusterState.load(state_dir)
    if existing is not None:
        alive = existing.running()
        if alive:
            pids = ", ".join(f"{c.name} pid {c.pid}" for c in alive)
            console.out(f"a cluster from {state_dir} is already running (etcd at "
                        f"{existing.etcd}; {pids}); stop it with `swctl down --state-dir "
                        f"{state_dir}`")
            return 0
        # Left over from a cluster that died without `down`: clear what it left.
        _remove_leftovers(existing, quiet=True)
        existing.remove()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    # SIGTERM during start-up unwinds like Ctrl-C, through the clean-up below.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    url = f"http://127.0.0.1:{args.etcd_port}"
    state = ClusterState(state_dir, url, opts.prefix, args.detach, os.getpid(), [])
    # Secrets are sealed under this keyring; kept with the cluster's data, so a restarted
    # cluster opens what it sealed before (docs/secrets.md).
    sealed.ensure(state.keyring)
    try:
        extra_hosts: tuple[str, ...] = ()
        underlay: netnodes.Underlay | None = None
        if args.managers and not args.nodes:
            raise errors.CliError("--managers needs --nodes N: each manager is a "
                                  "network-namespace node")
        if args.nodes:
            with console.Spinner(f"building {args.nodes} network-namespace nodes"):
                underlay = _build_underlay(args, state)
            console.out(f"{console.OK} {len(underlay.nodes)} nodes on bridge "
                        f"{underlay.bridge} ({underlay.subnet}; host {underlay.host_address})")
            extra_hosts = (underlay.host_address,)  # so agents in the namespaces reach etcd
        if args.managers:
            first_dir = _up_through_join(args, state, underlay)
            if args.detach:
                console.out("\n".join([
                    f"Cluster running in the background (state and logs in {state_dir}). "
                    "Try:", f"  export SHOAL_DATA_DIR={first_dir}", *_hints(state)[-3:],
                    f"Stop it with `swctl down --state-dir {state_dir}`."]))
                return 0
            console.out("\n".join(["Cluster running. In another terminal:",
                                   f"  export SHOAL_DATA_DIR={first_dir}",
                                   *_hints(state)[-3:], "Press Ctrl-C to stop."]))
            return _wait_foreground(state)
        with console.Spinner(f"starting etcd on port {args.etcd_port}"):
            _start_etcd(state, args.etcd_port, extra_hosts)
        where = " and ".join([url, *(f"http://{h}:{args.etcd_port}" for h in extra_hosts)])
        console.out(f"{console.OK} etcd ready at {where} (data in {state_dir / 'etcd'})")
        with console.Spinner("starting controller-manager"):
            manager = _start_manager(state)
        console.out(f"{console.OK} controller-manager running (pid {manager.pid})")
        plans = plan_agents(args, state)
        # All started first, then checked together: N agents cost one grace period.
        started = [(plan, _start_agent(state, plan)) for plan in plans]
        with console.Spinner(f"starting {len(plans)} agent{'s' if len(plans) != 1 else ''}"):
            for plan, agent in started:
                _survives_start(agent, plan.name, Path(agent.log))
        for plan, agent in started:
            console.out(f"{console.OK} agent running ({plan.summary}; pid {agent.pid})")
        _wait_nodes(state, plans, NODES_READY_TIMEOUT)
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


def _up_through_join(args: argparse.Namespace, state: ClusterState,
                     underlay: netnodes.Underlay | None) -> Path:
    """``--managers M``: init and join in the nodes (``upjoin``) instead of one etcd."""
    from shoal.cli import upjoin

    if underlay is None or args.managers > len(underlay.nodes):
        raise errors.CliError(f"--managers {args.managers} needs --nodes N with N >= "
                              f"{args.managers}: each manager is a node")
    return upjoin.build(args, state, underlay, _local_runtime(args.runtime))


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
    _remove_leftovers(state, quiet)
    state.remove()


def _remove_leftovers(state: ClusterState, quiet: bool) -> None:
    """Workloads of the cluster's nodes and the ``--nodes`` underlay (``leftovers``)."""
    if not state.has_leftovers():
        return
    for line in leftovers.remove_all(state.nodes, state.underlay, _notice):
        if not quiet:
            console.out(f"{console.OK} {line}")


# --- down ---

def run_down(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    state_dir = (args.state_dir or common.default_state_dir()).absolute()
    state = ClusterState.load(state_dir)
    if state is None or not state.running():
        console.out(f"no cluster is running from {state_dir}")
        if state is not None:
            # Its processes are gone, but containers, tasks or namespaces may not be.
            _remove_leftovers(state, quiet=False)
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
