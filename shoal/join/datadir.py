"""A node's data dir: where ``swctl init``/``join`` keep what makes a machine a member.

What it owns: the layout of ``DIR`` (``--data-dir``, ``$SHOAL_DATA_DIR``, default
``/var/lib/shoal``) and the one file describing the node, ``DIR/node.json``::

    DIR/node.json          {name, role, advertise_addr, endpoints, prefix, join_addrs}
    DIR/pki/ca.crt         the cluster CA (every node)
    DIR/pki/ca.key         its key (managers only: they sign joiners' certificates)
    DIR/pki/root.crt|key   etcd's root user (managers: their controller-manager, swctl)
    DIR/pki/node.crt|key   this node's agent (CN shoal:node:<name>, managers' too)
    DIR/pki/etcd-server.crt|key, etcd-peer.crt|key   the local etcd member (managers)
    DIR/etcd/              the etcd member's data (managers)
    DIR/keyring.json       the secrets keyring (managers)
    DIR/logs/              the detached processes' logs
    DIR/processes.json     what init/join started detached (cluster.ChildRecord list)
    DIR/start.json         how init/join started the processes (systemd units, and
                           where, or detached) and the agent's options, for leave and
                           role-watch

Why one small JSON file and fixed names: every program on the node (the agent, the
controller-manager, swctl run by an operator) finds the cluster from the dir alone, and a
machine is moved or inspected by looking at files, not by asking a service. Writes are
atomic (temp file + rename) and keys are written 0600 before anything refers to them, so
a SIGKILL at any point leaves either the old file or the new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

ENV: Final = "SHOAL_DATA_DIR"
DEFAULT: Final = Path("/var/lib/shoal")
NODE_FILE: Final = "node.json"
ROLES: Final = ("manager", "worker")


class DataDirError(Exception):
    """A data dir that is missing, unreadable, or not what the command needs."""


def resolve(flag: str | Path | None) -> Path:
    """``--data-dir``, else ``$SHOAL_DATA_DIR``, else ``/var/lib/shoal``; made absolute."""
    return Path(flag or os.environ.get(ENV) or DEFAULT).absolute()


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths inside one data dir (nothing is read or created by building it)."""

    root: Path

    @property
    def node_file(self) -> Path:
        return self.root / NODE_FILE

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring.json"

    @property
    def processes(self) -> Path:
        return self.root / "processes.json"

    @property
    def start_file(self) -> Path:
        return self.root / "start.json"

    def cert(self, name: str) -> Path:
        """``pki/<name>.crt``: ca, root, node, etcd-server, etcd-peer."""
        return self.pki / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.pki / f"{name}.key"

    @property
    def ca_cert(self) -> Path:
        return self.cert("ca")

    def exists(self) -> bool:
        return self.node_file.is_file()


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """``node.json``: who this node is and where its cluster's etcd answers."""

    name: str
    role: str
    advertise_addr: str
    endpoints: tuple[str, ...]
    prefix: str
    join_addrs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "advertise_addr": self.advertise_addr,
                "endpoints": list(self.endpoints), "prefix": self.prefix,
                "join_addrs": list(self.join_addrs)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> NodeConfig:
        if not isinstance(data, dict):
            raise DataDirError(f"{where} is not a JSON object; it is written by `swctl init` "
                               "or `swctl join`: run one of them again, or restore the file")

        def text(field: str) -> str:
            value = data.get(field)
            if not isinstance(value, str) or not value:
                raise DataDirError(f'{where}: "{field}" is missing or not a string; the file '
                                   "is damaged (`swctl init`/`join` wrote it)")
            return value

        def texts(field: str, required: bool) -> tuple[str, ...]:
            value = data.get(field, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value) \
                    or (required and not value):
                raise DataDirError(f'{where}: "{field}" must be a list of strings'
                                   f"{' (at least one)' if required else ''}")
            return tuple(value)

        role = text("role")
        if role not in ROLES:
            raise DataDirError(f'{where}: "role" is {role!r}; expected manager or worker')
        return cls(name=text("name"), role=role, advertise_addr=text("advertise_addr"),
                   endpoints=texts("endpoints", True), prefix=text("prefix"),
                   join_addrs=texts("join_addrs", False))

    def with_changes(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename, with ``mode`` set
    before the data lands (a key is never readable by others, even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def save_node(layout: Layout, config: NodeConfig) -> None:
    write_atomic(layout.node_file, (json.dumps(config.to_json(), indent=2) + "\n").encode())


def load_node(layout: Layout) -> NodeConfig:
    """``node.json``; a missing one says how a node gets one."""
    path = layout.node_file
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise DataDirError(f"{path} does not exist: this machine is not part of a cluster "
                           "(start one with `swctl init`, join one with `swctl join`, or "
                           "point at another data dir with --data-dir or "
                           f"${ENV})") from None
    except OSError as exc:
        raise DataDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DataDirError(f"{path} is not valid JSON ({exc}); the file is damaged") from None
    return NodeConfig.from_json(data, str(path))


def save_pem(layout: Layout, name: str, cert: bytes | None = None,
             key: bytes | None = None) -> None:
    """``pki/<name>.key`` (0600) first, then ``pki/<name>.crt``: a cert on disk always
    has its key beside it."""
    layout.pki.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.pki, 0o700)
    if key is not None:
        write_atomic(layout.key(name), key, 0o600)
    if cert is not None:
        write_atomic(layout.cert(name), cert)


def missing(layout: Layout, names: Sequence[str]) -> list[Path]:
    """Which of ``pki/<name>.crt|key`` are not there (what a command needs and lacks)."""
    out = []
    for name in names:
        for path in (layout.cert(name), layout.key(name)):
            if not path.is_file():
                out.append(path)
    return out
