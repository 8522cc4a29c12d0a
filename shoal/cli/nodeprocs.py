"""The processes that make a machine a cluster node, started by ``init``/``join``,
stopped by ``leave``: the etcd member (managers), the controller-manager (managers;
it serves the join endpoint) and the agent.

What it owns: their command lines, built from the data dir alone (``node.json`` and
``pki/``), and their records in ``DIR/processes.json`` (the same pid + start-time
records ``swctl up`` keeps, so a reused pid is never mistaken for ours). They run
detached, each in its own session with its log in ``DIR/logs``, as ``swctl up -d`` runs
its children; systemd units (deploy/) will take this over where systemd runs.

Why every command line is derived again from the data dir rather than stored: the dir is
the truth (a renewed certificate, an added endpoint), and a restarted machine starts the
same processes from it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from shoal.cli import cluster, errors
from shoal.join import datadir

ETCD = "etcd"
MANAGER = "controller-manager"
AGENT = "agent"
ROLE_WATCH = "role-watch"


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
               extra: list[str]) -> list[str]:
    # --tls-dir: the node certificate is its etcd identity and serves its task logs over
    # TLS to the admin (root) certificate only.
    argv = swctl_argv("agent", "--etcd", ",".join(cfg.endpoints), "--prefix", cfg.prefix,
                      "--tls-dir", str(layout.pki), "--name", cfg.name, "--role", cfg.role,
                      "--address", cfg.advertise_addr, "--runtime", runtime, *extra)
    if layout.keyring.exists():
        argv += ["--keyring", str(layout.keyring)]
    return argv


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


def start(layout: datadir.Layout, name: str, argv: list[str]) -> cluster.Child:
    """Start ``argv`` detached, recorded before anything waits on it (a ``leave`` after
    an interrupted ``init`` still finds it)."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    children = [c for c in load(layout) if c.name != name or c.alive()]
    if any(c.name == name and c.alive() for c in children):
        raise errors.CliError(f"this node's {name} is already running (see {layout.processes})")
    child = cluster.start_process(name, argv, layout.logs / f"{name}.log")
    save(layout, [*children, child])
    return child


def running(layout: datadir.Layout, name: str) -> bool:
    return any(c.name == name and c.alive() for c in load(layout))


def survives(child: cluster.Child, what: str, grace: float = cluster.MANAGER_GRACE) -> None:
    """Fail with the log's tail when ``child`` dies during its first ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and child.alive():
        time.sleep(0.05)
    if not child.alive():
        tail = Path(child.log).read_text(errors="replace").splitlines()[-15:]
        raise errors.CliError([f"the {what} exited at start-up", f"  log: {child.log}",
                               *("  " + line for line in tail)])


def stop_all(layout: datadir.Layout, grace: float = cluster.STOP_GRACE,
             only: tuple[str, ...] | None = None) -> list[str]:
    """Stop this node's processes (agent, controller-manager, etcd: the reverse of their
    start); the names of those that were running."""
    children = load(layout)
    stopped = []
    order = [ROLE_WATCH, AGENT, MANAGER, ETCD]
    for child in sorted(children, key=lambda c: order.index(c.name) if c.name in order else 0):
        if only is not None and child.name not in only:
            continue
        if child.alive():
            child.stop(grace)
            stopped.append(child.name)
    save(layout, [c for c in children if c.alive()])
    return stopped
