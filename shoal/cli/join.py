"""``swctl join``, ``swctl join-token`` and ``swctl leave``: Docker's swarm membership
verbs (``docker swarm join|join-token|leave``).

``join --token TOKEN ADDR[:PORT]``: a new key and CSR are made here (the key never
leaves the machine), the join endpoint at ADDR is asked through ``shoal.join.client``
(which pins the CA to the token before sending it), and what it answers is written to
the data dir. A worker then starts its agent. A manager also gets the CA key, the root
credentials and the keyring, issues its own etcd server and peer certificates, starts
its etcd member with ``initial-cluster-state existing`` (the endpoint has already added
it), then its controller-manager (serving the join endpoint too) and its agent.

``join-token worker|manager [--rotate] [-q]`` reads the tokens from etcd and opens their
secrets with the keyring (so only a manager's data dir can print them);
``leave [--force]`` stops this node's processes (and disables and removes their systemd
units) and removes its data dir, and a manager
first gives up its etcd member -- only with ``--force``, as Docker asks, and never
silently past the quorum edge.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from typing import Any

from shoal.cli import common, console, errors, init, nodeprocs, systemctl
from shoal.crds import sealed
from shoal.join import client, datadir, managers, membership, protocol, service, tokens
from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import Bundle
from shoal.store import errors as store_errors
from shoal.store import etcd


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    j = sub.add_parser(
        "join", parents=parents, help="join this machine to a cluster as a worker or manager",
        description="Join a cluster through the join endpoint of one of its managers "
                    "(ADDR[:PORT], port 4243 by default). The token decides the role and "
                    "pins the cluster's CA: get one with `swctl join-token worker` (or "
                    "manager) on a manager.")
    j.add_argument("--token", required=True, help="the join token (SWMTKN-1-...)")
    j.add_argument("address", metavar="ADDR[:PORT]", help="a manager's join endpoint")
    init.add_common_flags(j)
    j.set_defaults(func=run_join, error_code=1)

    t = sub.add_parser(
        "join-token", parents=parents, help="print (or rotate) the token that joins workers "
                                            "or managers",
        description="Print the command that joins a worker or a manager; --rotate makes a "
                    "new token first (the old one stops admitting anyone; nodes already "
                    "joined are not affected). Needs a manager's data dir (its keyring).")
    t.add_argument("role", choices=("worker", "manager"))
    t.add_argument("--rotate", action="store_true", help="replace the token with a new one")
    t.add_argument("-q", "--quiet", action="store_true", help="print only the token")
    t.set_defaults(func=run_join_token, error_code=1)

    leave = sub.add_parser(
        "leave", parents=parents, help="take this machine out of its cluster",
        description="Stop this node's agent (and, on a manager, its controller-manager and "
                    "etcd member, which is removed from etcd's membership) and remove its "
                    "data dir. The node stays in `swctl node ls` as down until `swctl node "
                    "rm`. A manager leaves only with --force.")
    leave.add_argument("-f", "--force", action="store_true",
                       help="leave even though this node is a manager")
    leave.set_defaults(func=run_leave, error_code=1)


def layout_of(opts: common.GlobalOptions) -> datadir.Layout:
    return datadir.Layout(opts.data_dir)


# --- join ---

def write_manager_credentials(layout: datadir.Layout, m: protocol.ManagerMaterial) -> None:
    """The CA key, the root credentials and the keyring a manager holds."""
    datadir.save_pem(layout, "ca", None, m.ca_key.encode())
    datadir.save_pem(layout, "root", m.root_cert.encode(), m.root_key.encode())
    sealed.save(sealed.Keyring.from_json(m.keyring, "the join answer"), layout.keyring)


def _write_credentials(layout: datadir.Layout, resp: protocol.JoinResponse,
                       node_key: bytes) -> None:
    datadir.save_pem(layout, "ca", resp.ca.encode())
    datadir.save_pem(layout, "node", resp.cert.encode(), node_key)
    if resp.manager is not None:
        write_manager_credentials(layout, resp.manager)


def run_join(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    layout = layout_of(opts)
    init.refuse_if_member(layout)
    systemctl.wanted(args.no_systemd)  # a bad $SHOAL_SYSTEMD fails before anything is asked
    try:
        host, port = protocol.split_addr(args.address)
    except ValueError as exc:
        raise errors.CliError(str(exc)) from None
    name = init.node_name(args.name)
    addr = init.advertise_addr(args.advertise_addr, towards=host)
    key = pki_ca.key_pem(pki_ca.new_key())
    csr = certs.make_csr(pki_ca.load_key_pem(key), certs.node_user(name))
    from cryptography.hazmat.primitives import serialization

    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    with console.Spinner(f"joining through {protocol.join_addr(host, port)}"):
        try:
            resp = client.join(host, port, args.token, csr_pem, name, addr)
        except client.JoinError as exc:
            raise errors.CliError(str(exc)) from None
    init.prepare_start(layout, args)
    _write_credentials(layout, resp, key)
    own_join = protocol.join_addr(addr, args.listen_join)
    cfg = datadir.NodeConfig(
        name=name, role=resp.role, advertise_addr=addr, endpoints=resp.endpoints,
        prefix=resp.prefix,
        join_addrs=tuple(dict.fromkeys(([own_join] if resp.role == "manager" else [])
                                       + list(resp.join_addrs))))
    if resp.manager is not None:
        ca = pki_ca.load_ca(layout.ca_cert, layout.key("ca"))
        init.issue_member_certs(layout, ca, addr)
        server = init.etcd_member(layout, cfg, resp.manager.initial_cluster, "existing")
        with console.Spinner(f"starting the etcd member at {server.url}"):
            init.start_etcd(layout, server)
    datadir.save_node(layout, cfg)
    with console.Spinner("starting the node's processes"):
        init.start_node_processes(layout, cfg)
        bundle = init.root_bundle(layout) if cfg.role == "manager" else \
            Bundle(layout.ca_cert, layout.cert("node"), layout.key("node"))
        node_id = asyncio.run(init.wait_node(layout, cfg, bundle))
    if not node_id:
        console.out(f"! node {name} did not report ready within {init.NODE_READY_TIMEOUT:g}s; "
                    f"see {layout.logs / 'agent.log'}")
    console.out(f"This node joined a swarm as a {resp.role}.")
    return 0


# --- join-token ---

def manager_layout(opts: common.GlobalOptions, verb: str) -> tuple[datadir.Layout,
                                                                   datadir.NodeConfig]:
    layout = layout_of(opts)
    try:
        cfg = datadir.load_node(layout)
    except datadir.DataDirError as exc:
        raise errors.CliError(str(exc)) from None
    missing = datadir.missing(layout, ["root"])
    if cfg.role != "manager" or missing or not layout.keyring.exists():
        raise errors.CliError(f"`swctl {verb}` needs a manager's data dir ({layout.root} is "
                              f"a {cfg.role}'s): run it on a manager, or point --data-dir at "
                              "one")
    return layout, cfg


async def _token(layout: datadir.Layout, cfg: datadir.NodeConfig, role: str,
                 rotate: bool) -> tuple[str, list[str]]:
    ring = sealed.load(layout.keyring)
    c = etcd.EtcdClient(",".join(cfg.endpoints), tls=init.root_bundle(layout))
    await c.connect()
    try:
        if rotate:
            found: tokens.Tokens | None = await tokens.rotate(c, cfg.prefix, ring, role)
        else:
            found = await tokens.load(c, cfg.prefix)
        if found is None:
            raise errors.CliError("this cluster has no join tokens: was it made with "
                                  "`swctl init`?")
        addrs = await service.list_join_addrs(c, cfg.prefix)
    finally:
        await c.close()
    return tokens.token_text(found, ring, layout.ca_cert.read_bytes(), role), addrs


def run_join_token(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    layout, cfg = manager_layout(opts, "join-token")
    token, addrs = asyncio.run(_token(layout, cfg, args.role, args.rotate))
    if args.quiet:
        console.out(token)
        return 0
    own = cfg.join_addrs[0] if cfg.join_addrs else ""
    addr = own if own in addrs or not addrs else addrs[0]
    lines = [f"Successfully rotated {args.role} join token.", ""] if args.rotate else []
    console.out("\n".join([*lines, f"To add a {args.role} to this swarm, run the following "
                                   "command:", "", init.join_command(token, addr), ""]))
    return 0


# --- leave ---

async def _give_up_membership(layout: datadir.Layout, cfg: datadir.NodeConfig,
                              force: bool) -> None:
    c = etcd.EtcdClient(",".join(cfg.endpoints), tls=init.root_bundle(layout))
    await c.connect()
    try:
        members, answers = await membership.health(c)
        rest = [m for m in members if m.name != cfg.name]
        if not force:
            kept = sum(1 for m in rest if answers.get(m.id) is not None)
            state = "kept" if rest and kept >= managers.quorum(len(rest)) else "lost"
            raise errors.CliError(
                f"this node is a manager: leaving removes its etcd member and leaves "
                f"{len(rest)} manager{'s' if len(rest) != 1 else ''} ({kept} reachable; "
                f"quorum {state}). Demote it first with `swctl node demote {cfg.name}` "
                "from another manager, or use --force to leave anyway")
        if not rest:
            return  # the last manager: the cluster goes with it
        await service.forget_join_addr(c, cfg.prefix, cfg.name)
        try:
            await membership.remove_manager(c, cfg.name, verb="leaving")
        except managers.QuorumError as exc:
            console.out(f"! {exc}; leaving anyway (--force): its etcd member stays listed "
                        "until the other managers remove it")
    finally:
        await c.close()


def remove_state(layout: datadir.Layout) -> None:
    """What init/join wrote, and only that: the dir may hold the user's own files."""
    for path in (layout.pki, layout.etcd_data, layout.logs):
        shutil.rmtree(path, ignore_errors=True)
    # start.json last: until it is gone a re-run of `leave` knows the units to remove.
    for path in (layout.node_file, layout.keyring, layout.processes, layout.start_file):
        path.unlink(missing_ok=True)


def run_leave(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    layout = layout_of(opts)
    try:
        cfg: datadir.NodeConfig | None = datadir.load_node(layout)
    except datadir.DataDirError as exc:
        if not layout.processes.exists() and not layout.start_file.exists():
            raise errors.CliError(str(exc)) from None
        cfg = None  # an interrupted init/join: stop what it started
    if cfg is not None and cfg.role == "manager" and layout.cert("root").exists():
        try:
            asyncio.run(_give_up_membership(layout, cfg, args.force))
        except store_errors.UnavailableError as exc:
            if not args.force:
                raise errors.CliError(f"{exc}; use --force to leave without removing this "
                                      "node's etcd member") from None
    with console.Spinner("stopping this node's processes"):
        nodeprocs.stop_all(layout, remove=True)  # and disable and remove its units
    remove_state(layout)
    console.out("Node left the swarm.")
    return 0
