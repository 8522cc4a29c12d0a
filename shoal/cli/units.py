"""The systemd units of a node's processes, rendered from the command lines ``nodeprocs``
builds: ``shoal-etcd``, ``shoal-controller-manager``, ``shoal-agent`` and
``shoal-role-watch``. Pure: text in, text out; ``systemd`` installs and starts them.

Why generated from one module rather than shipped as templates (``deploy/systemd/``
holds examples rendered by this module, for reading): the ``ExecStart`` line must be the
very argv the detached path runs (``nodeprocs.*_argv``), with the data dir, the etcd
flags and the agent's options baked in. A template would be a second copy of those
command lines to keep in step; rendering from the argv function leaves one source of
truth, and a restarted machine starts exactly what ``init``/``join`` started.

The shape of each unit, and why:

* ``Restart=always``, ``RestartSec=2`` and no start-rate limit
  (``StartLimitIntervalSec=0``): a node process that dies comes back, however often --
  an etcd member waiting for its peers after a power cut must not be given up on;
* ``After=``/``Wants=`` the local etcd member for the controller-manager and the agent
  (managers only: a worker has no local member), and ``network-online.target`` for all
  (etcd binds the advertised address);
* stopping matches ``nodeprocs.stop_all``: SIGTERM, SIGKILL after ``STOP_GRACE``
  (``TimeoutStopSec``). The etcd member, controller-manager and role watcher are stopped
  as a group (``KillMode=control-group``, what ``killpg`` does); the agent only itself
  (``KillMode=process``, as containerd's unit): its process-runtime task shims and a
  dockerd it started run in sessions of their own and outlive an agent restart, exactly
  as they do on the detached path;
* output appended to ``DIR/logs/<process>.log``, where the detached path writes it, so
  the logs are in one place whichever way the node runs;
* ``LimitNOFILE``: etcd and the agent hold a socket per watch, client and task;
* only paths on the command line: keys, certificates and tokens stay in ``DIR/pki``
  (mode 0600), never in a unit file that any user may read.

Names: ``shoal-<process>.service`` for the default data dir (``/var/lib/shoal``); another
data dir adds its instance suffix (``shoal-agent-nodeb-1a2b3c4d.service``, from the
dir's name and a digest of its path), so two data dirs on one machine never share a unit.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from shoal.join import datadir

ETCD: Final = "etcd"
MANAGER: Final = "controller-manager"
AGENT: Final = "agent"
ROLE_WATCH: Final = "role-watch"
PROCESSES: Final = (ETCD, MANAGER, AGENT, ROLE_WATCH)

RESTART_SEC: Final = 2
LIMIT_NOFILE: Final = 1048576
# The first line of every unit swctl writes: `leave` removes only files that carry it.
MARKER: Final = "# Written by swctl init/join for the node whose data dir is"

_WHAT: Final = {ETCD: "etcd member", MANAGER: "controller-manager", AGENT: "node agent",
                ROLE_WATCH: "role watcher (promote/demote, certificate renewal)"}
_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def instance(root: Path) -> str:
    """The suffix that keeps one data dir's units apart from another's ("" for the
    default dir)."""
    if root == datadir.DEFAULT:
        return ""
    base = re.sub(r"[^A-Za-z0-9_]+", "", root.name)[:20] or "node"
    return f"{base}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def unit_name(root: Path, process: str) -> str:
    if process not in PROCESSES:
        raise ValueError(f"no unit for {process!r}; expected one of {', '.join(PROCESSES)}")
    suffix = instance(root)
    return f"shoal-{process}{'-' + suffix if suffix else ''}.service"


def quote(arg: str) -> str:
    """One argument as systemd's command-line syntax reads it back: ``%`` and ``$``
    doubled (specifiers and variables), anything else than plain characters in double
    quotes with ``\\`` and ``"`` escaped."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.fullmatch(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _specifiers(text: str) -> str:
    """``%`` doubled: systemd expands specifiers (``%n``) in most settings."""
    return text.replace("%", "%%")


def exec_line(argv: Sequence[str]) -> str:
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"ExecStart needs an absolute program path, got {list(argv)[:1]}")
    return " ".join(quote(a) for a in argv)


def exec_argv(line: str) -> list[str]:
    """The argv of an ``ExecStart=`` value written by :func:`exec_line` (its inverse)."""
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line)]


def render(layout: datadir.Layout, process: str, argv: Sequence[str], *,
           local_etcd: bool, stop_grace: float) -> str:
    """The unit file of ``process`` running ``argv``; ``local_etcd``: this node runs an
    etcd member (a manager), which the other processes are ordered after."""
    root = layout.root
    after = ["network-online.target"]
    wants = ["network-online.target"]
    if process != ETCD and local_etcd:
        after.append(unit_name(root, ETCD))
        wants.append(unit_name(root, ETCD))
    if process == AGENT:
        after.append("docker.service")  # ordering only: used when Docker runs as a service
    log = _specifiers(str(layout.logs / f"{process}.log"))
    lines = [
        f"{MARKER} {root}; `swctl leave` removes it.",
        "# Do not edit: `swctl init`/`join` and the role watcher write it again.",
        "[Unit]",
        f"Description=Shoal {_WHAT[process]} ({_specifiers(str(root))})",
        f"After={' '.join(after)}",
        f"Wants={' '.join(wants)}",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_line(argv)}",
        "Restart=always",
        f"RestartSec={RESTART_SEC}",
        f"KillMode={'process' if process == AGENT else 'control-group'}",
        f"TimeoutStopSec={stop_grace:g}",
        f"LimitNOFILE={LIMIT_NOFILE}",
        f"StandardOutput=append:{log}",
        f"StandardError=append:{log}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def exec_start(text: str) -> list[str]:
    """The argv of a rendered unit's ``ExecStart=`` line."""
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            return exec_argv(line.removeprefix("ExecStart="))
    raise ValueError("the unit has no ExecStart= line")


def ours(text: str, root: Path) -> bool:
    """Was this unit written by swctl for the data dir ``root``?"""
    return text.startswith(f"{MARKER} {root};")
