"""The processes that make a machine a cluster node, started by ``init``/``join``,
stopped by ``leave``: the etcd member (managers), the controller-manager (managers;
it serves the join endpoint), the agent and the role watcher.

What it owns: their command lines, built from the data dir alone (``node.json``,
``pki/`` and ``start.json``), and how they run -- the one choice ``init``/``join`` make
and record in ``DIR/start.json`` (``StartRecord``), so ``leave`` and the role watcher
do the same after a restart:

* as systemd units (``units`` renders them from these same argv functions,
  ``systemctl`` installs and starts them) where systemd is PID 1;
* else detached, each in its own session with its log in ``DIR/logs``, as ``swctl up
  -d`` runs its children, recorded in ``DIR/processes.json`` (the same pid + start-time
  records ``swctl up`` keeps, so a reused pid is never mistaken for ours).

Both ways are waited for alike (``survives``: the process still runs after its grace,
else the log's tail), and stopping looks at both (a node switched from one to the other
by an interrupted ``init`` leaves nothing running).

Why every command line is derived again from the data dir rather than stored: the dir is
the truth (a renewed certificate, an added endpoint), and a restarted machine starts the
same processes from it -- the units are rewritten when ``node.json`` changes
(``refresh_units``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import structlog

from shoal.cli import cluster, errors, systemctl, units
from shoal.join import datadir

log = structlog.get_logger("shoal.cli.nodeprocs")

ETCD = units.ETCD
MANAGER = units.MANAGER
AGENT = units.AGENT
ROLE_WATCH = units.ROLE_WATCH
# Stop order: the reverse of the start order.
STOP_ORDER = (ROLE_WATCH, AGENT, MANAGER, ETCD)
ACTIVE = ("active", "activating", "reloading")


@dataclasses.dataclass(frozen=True)
class StartRecord:
    """``start.json``: how this node's processes run, and the options of ``init``/``join``
    that their command lines take besides the data dir."""

    systemd: bool
    runtime: str = "auto"
    agent_args: tuple[str, ...] = ()
    listen_join: int = 4243
    #: Where the units were written (systemd): leave and the role watcher use this one,
    #: whatever their environment says.
    unit_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"supervisor": "systemd" if self.systemd else "detached",
                "runtime": self.runtime, "agent_args": list(self.agent_args),
                "listen_join": self.listen_join, "unit_dir": self.unit_dir}

    @classmethod
    def from_json(cls, data: Any, where: str) -> StartRecord:
        ok = isinstance(data, dict) and data.get("supervisor") in ("systemd", "detached") \
            and isinstance(data.get("runtime", ""), str) \
            and isinstance(data.get("listen_join", 0), int) \
            and isinstance(data.get("agent_args", []), list) \
            and isinstance(data.get("unit_dir", ""), str)
        if not ok:
            raise errors.CliError(f"{where} is damaged (expected supervisor systemd|detached, "
                                  "runtime, agent_args, listen_join): `swctl leave --force` "
                                  "and init/join again, or restore the file")
        return cls(systemd=data["supervisor"] == "systemd",
                   runtime=str(data.get("runtime") or "auto"),
                   agent_args=tuple(str(a) for a in data.get("agent_args") or []),
                   listen_join=int(data.get("listen_join") or 4243),
                   unit_dir=str(data.get("unit_dir") or ""))


def save_start(layout: datadir.Layout, rec: StartRecord) -> None:
    datadir.write_atomic(layout.start_file, (json.dumps(rec.to_json(), indent=2)
                                             + "\n").encode())


def load_start(layout: datadir.Layout) -> StartRecord | None:
    try:
        text = layout.start_file.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.CliError(f"cannot read {layout.start_file}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    return StartRecord.from_json(data, str(layout.start_file))


def under_systemd(layout: datadir.Layout) -> bool:
    rec = load_start(layout)
    return rec is not None and rec.systemd


def tls_flags(layout: datadir.Layout, identity: str) -> list[str]:
    """``--etcd-ca/--etcd-cert/--etcd-key`` for ``identity`` (``root`` or ``node``)."""
    return ["--etcd-ca", str(layout.ca_cert), "--etcd-cert", str(layout.cert(identity)),
            "--etcd-key", str(layout.key(identity))]


def swctl_argv(*args: str) -> list[str]:
    # `python -m shoal.cli` rather than the swctl script: works without PATH set up.
    return [sys.executable, "-m", "shoal.cli", *args]


def manager_argv(layout: datadir.Layout, cfg: datadir.NodeConfig, join_port: int) -> list[str]:
    return swctl_argv("--etcd", ",".join(cfg.endpoints), "--prefix", cfg.prefix,
                      *tls_flags(layout, "root"), "--data-dir", str(layout.root),
                      "controller-manager", "--identity", cfg.name,
                      "--listen-join", f"{cfg.advertise_addr}:{join_port}")


def agent_argv(layout: datadir.Layout, cfg: datadir.NodeConfig, runtime: str,
               extra: list[str] | tuple[str, ...]) -> list[str]:
    # --tls-dir: the node certificate is its etcd identity and serves its task logs over
    # TLS to the admin (root) certificate only.
    argv = swctl_argv("agent", "--etcd", ",".join(cfg.endpoints), "--prefix", cfg.prefix,
                      "--tls-dir", str(layout.pki), "--name", cfg.name, "--role", cfg.role,
                      "--address", cfg.advertise_addr, "--runtime", runtime, *extra)
    if layout.keyring.exists():
        argv += ["--keyring", str(layout.keyring)]
    return argv


def role_watch_argv(layout: datadir.Layout, join_port: int) -> list[str]:
    return swctl_argv("--data-dir", str(layout.root), ROLE_WATCH,
                      "--listen-join", str(join_port))


def argv_for(layout: datadir.Layout, name: str, cfg: datadir.NodeConfig,
             rec: StartRecord) -> list[str]:
    """The command line of ``name`` (not etcd: its initial-cluster flags come from the
    join answer, see ``init.etcd_member``) from the data dir and ``start.json``."""
    if name == MANAGER:
        return manager_argv(layout, cfg, rec.listen_join)
    if name == AGENT:
        return agent_argv(layout, cfg, rec.runtime, rec.agent_args)
    if name == ROLE_WATCH:
        return role_watch_argv(layout, rec.listen_join)
    raise ValueError(f"no command line for {name!r} from the data dir alone")


# --- detached ---

def load(layout: datadir.Layout) -> list[cluster.Child]:
    try:
        data = json.loads(layout.processes.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise errors.CliError(f"cannot read {layout.processes}: {exc}; if none of this node's "
                              "processes runs, delete the file") from None
    return [cluster.Child.from_record(r) for r in data.get("processes") or []]


def save(layout: datadir.Layout, children: list[cluster.Child]) -> None:
    datadir.write_atomic(layout.processes, (json.dumps(
        {"processes": [c.record() for c in children]}, indent=2) + "\n").encode())


class Proc(Protocol):
    """A started node process, detached (``cluster.Child``) or a unit (``Unit``)."""

    name: str
    log: str
    popen: Any

    def alive(self) -> bool: ...


@dataclasses.dataclass
class Unit:
    """A node process run by systemd."""

    name: str
    unit: str
    log: str
    popen: Any = None

    def alive(self) -> bool:
        st = systemctl.state(self.unit)
        # Restart=always: a process that died shows as activating/auto-restart.
        return st["ActiveState"] == "active" and st["SubState"] == "running"


def start(layout: datadir.Layout, name: str, argv: list[str]) -> Proc:
    """Start ``argv`` as the node's ``name``: a systemd unit when ``start.json`` says so,
    else detached."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    if under_systemd(layout):
        return start_unit(layout, name, argv)
    return start_detached(layout, name, argv)


def start_detached(layout: datadir.Layout, name: str, argv: list[str]) -> cluster.Child:
    """Start ``argv`` detached, recorded before anything waits on it (a ``leave`` after
    an interrupted ``init`` still finds it)."""
    children = [c for c in load(layout) if c.name != name or c.alive()]
    if any(c.name == name and c.alive() for c in children):
        raise errors.CliError(f"this node's {name} is already running (see {layout.processes})")
    child = cluster.start_process(name, argv, layout.logs / f"{name}.log")
    save(layout, [*children, child])
    return child


# --- systemd ---

def unit_path(layout: datadir.Layout, name: str) -> Path:
    rec = load_start(layout)
    where = Path(rec.unit_dir) if rec is not None and rec.unit_dir else systemctl.unit_dir()
    return where / units.unit_name(layout.root, name)


def _installed(layout: datadir.Layout, name: str) -> bool:
    path = unit_path(layout, name)
    try:
        return units.ours(path.read_text(), layout.root)
    except OSError:
        return False


def _write_unit(layout: datadir.Layout, name: str, argv: list[str]) -> bool:
    """Write the unit of ``name`` when it differs from what is there; True if written."""
    text = units.render(layout, name, argv, local_etcd=name == ETCD or _installed(
        layout, ETCD), stop_grace=cluster.STOP_GRACE)
    path = unit_path(layout, name)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    datadir.write_atomic(path, text.encode())
    return True


def start_unit(layout: datadir.Layout, name: str, argv: list[str]) -> Unit:
    """Install, enable and start the unit of ``name``. Each step is idempotent: a re-run
    after a kill rewrites the same file and finds the unit enabled and running (it is
    restarted only when its file changed)."""
    unit = units.unit_name(layout.root, name)
    was_active = systemctl.state(unit)["ActiveState"] in ACTIVE
    changed = _write_unit(layout, name, argv)
    if changed:
        systemctl.run("daemon-reload")
    systemctl.run("enable", "--now", unit)
    if changed and was_active:
        systemctl.run("restart", unit)
    log.info("unit started", node=layout.root.name, unit=unit)
    return Unit(name, unit, str(layout.logs / f"{name}.log"))


def refresh_units(layout: datadir.Layout) -> list[str]:
    """Rewrite the installed units whose command lines follow ``node.json`` (endpoints,
    role) so that the next start -- a restart, a reboot -- runs what the data dir says
    now; running processes are left alone, as on the detached path. The units rewritten."""
    if not under_systemd(layout):
        return []
    rec = load_start(layout)
    assert rec is not None
    cfg = datadir.load_node(layout)
    changed = [units.unit_name(layout.root, name) for name in (MANAGER, AGENT, ROLE_WATCH)
               if _installed(layout, name)
               and _write_unit(layout, name, argv_for(layout, name, cfg, rec))]
    if changed:
        systemctl.run("daemon-reload")
    return changed


def _stop_units(layout: datadir.Layout, names: list[str], remove: bool) -> list[str]:
    stopped, removed = [], False
    for name in names:
        if not _installed(layout, name):
            continue
        unit = units.unit_name(layout.root, name)
        if systemctl.state(unit)["ActiveState"] in ACTIVE:
            stopped.append(name)
        if remove:
            # Disabled and stopped before the file goes: a kill in between leaves a
            # file that the next `leave` finds and removes.
            systemctl.run("disable", "--now", unit)
            unit_path(layout, name).unlink(missing_ok=True)
            removed = True
        else:
            systemctl.run("stop", unit)
    if removed:
        systemctl.run("daemon-reload")
    return stopped


# --- both ---

def running(layout: datadir.Layout, name: str) -> bool:
    if _installed(layout, name) and systemctl.state(
            units.unit_name(layout.root, name))["ActiveState"] in ACTIVE:
        return True
    return any(c.name == name and c.alive() for c in load(layout))


def survives(child: Proc, what: str, grace: float = cluster.MANAGER_GRACE) -> None:
    """Fail with the log's tail when ``child`` dies during its first ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and child.alive():
        time.sleep(0.05)
    if not child.alive():
        try:
            tail = Path(child.log).read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        where = [f"  log: {child.log}"]
        if isinstance(child, Unit):
            where.append(f"  status: systemctl status {child.unit}; journalctl -u {child.unit}")
        raise errors.CliError([f"the {what} exited at start-up", *where,
                               *("  " + line for line in tail)])


def stop_all(layout: datadir.Layout, grace: float = cluster.STOP_GRACE,
             only: tuple[str, ...] | None = None, remove: bool = False) -> list[str]:
    """Stop this node's processes (role watcher, agent, controller-manager, etcd: the
    reverse of their start), units and detached ones alike; with ``remove``, disable and
    delete their units too. The names of those that were running."""
    names = [n for n in STOP_ORDER if only is None or n in only]
    stopped = _stop_units(layout, names, remove)
    children = load(layout)
    order = list(STOP_ORDER)
    for child in sorted(children, key=lambda c: order.index(c.name) if c.name in order else 0):
        if only is not None and child.name not in only:
            continue
        if child.alive():
            child.stop(grace)
            stopped.append(child.name)
    save(layout, [c for c in children if c.alive()])
    return stopped
