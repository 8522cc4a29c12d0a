"""``swctl init``: make this machine the first manager of a new cluster, as ``docker
swarm init`` does.

What it owns: the bootstrap, in an order that a re-run after a crash finishes rather
than repeats (every artifact is made only if it is not there yet; the etcd member
restarts from its data; users, tokens and auth are checked before they are made).
``node.json`` is written just before the processes that read it start, and a data dir
that has one is refused (``leave --force`` clears a half-made node):

1. the cluster CA, the etcd root user's certificate (``root``: this manager's
   controller-manager and ``swctl``), this node's certificate (``shoal:node:<name>``:
   its agent), the etcd member's server and peer certificates, the secrets keyring --
   all in ``DIR`` (``datadir``);
2. the etcd member, TLS for clients and peers with client-certificate auth;
3. etcd's users and auth: ``root`` with etcd's root role, this node's user and role
   (``access``), the join tokens (``tokens``), then auth enabled -- from now on etcd
   takes the user from the certificate's CN and refuses clients without one;
4. ``node.json``; the controller-manager (which serves the join endpoint,
   ``--listen-join``), the agent and the role watcher;
5. Docker's message with the worker join command, once the node is ready.

Every process runs as a systemd unit where systemd is PID 1, else detached
(``nodeprocs``; ``--no-systemd``, ``$SHOAL_SYSTEMD``): the choice is the first thing
written (``DIR/start.json``), before any process starts, so ``leave`` after a kill at
any later point finds what to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import Any

from shoal.cli import common, console, errors, nodeprocs, systemctl
from shoal.crds import names, sealed
from shoal.join import access, datadir, protocol, service, tokens
from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import Bundle, ServerTLS
from shoal.store import errors as store_errors
from shoal.store import etcd, etcd_server, rbac

NODE_READY_TIMEOUT = 30.0
RUNTIMES = ("auto", "docker", "process", "hollow")


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Flags ``init`` and ``join`` share."""
    p.add_argument("--advertise-addr", metavar="ADDR",
                   help="the address other nodes reach this one on (default: the address "
                        "of the interface that routes to the manager, or the default route)")
    p.add_argument("--name", metavar="NAME", help="this node's name (default: the hostname)")
    p.add_argument("--listen-join", type=int, default=protocol.DEFAULT_PORT, metavar="PORT",
                   help=f"port of the join endpoint a manager serves (default "
                        f"{protocol.DEFAULT_PORT})")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="how this node's agent runs tasks (default auto: docker when "
                        "dockerd answers, else process)")
    # More flags for the agent, as is (tests: --dataplane none).
    p.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                   help=argparse.SUPPRESS)
    p.add_argument("--no-systemd", action="store_true",
                   help="run the node's processes detached even where systemd runs "
                        "(default: systemd units in /etc/systemd/system when systemd is "
                        "PID 1; also $SHOAL_SYSTEMD=no)")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init", parents=parents, help="make this machine the first manager of a new cluster",
        description="Create a cluster with this machine as its first manager: a CA, an "
                    "etcd member with TLS and client-certificate auth, the controller-"
                    "manager (serving the join endpoint) and the node agent. Prints the "
                    "command that joins workers.")
    add_common_flags(p)
    p.set_defaults(func=run_init, error_code=1)


# --- shared with join ---

def node_name(flag: str | None) -> str:
    name = flag or socket.gethostname().lower()
    problem = names.name_error(name)
    if problem:
        raise errors.CliError(f"node name {problem} (give one with --name)")
    return name


def route_source(towards: str = "192.0.2.1") -> str | None:
    """The local address the kernel would send from to ``towards`` (no packet is sent:
    a UDP connect only picks the route)."""
    family = socket.AF_INET6 if ":" in towards else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((towards, 9))
            addr: str = sock.getsockname()[0]
            return addr
    except OSError:
        return None


def advertise_addr(flag: str | None, towards: str | None = None) -> str:
    addr = flag or route_source(towards or "192.0.2.1")
    if not addr:
        raise errors.CliError("could not choose an address to advertise (no route found): "
                              "give one with --advertise-addr ADDR")
    return addr


def refuse_if_member(layout: datadir.Layout) -> None:
    if layout.exists():
        raise errors.CliError(f"this node is already part of a cluster ({layout.node_file}): "
                              "leave it first with `swctl leave` (`--force` on a manager), "
                              "or use another --data-dir")


def prepare_start(layout: datadir.Layout, args: argparse.Namespace) -> None:
    """Stop what an interrupted init/join started (its units too), then record how this
    run starts the processes -- before any of them starts."""
    use_systemd = systemctl.wanted(args.no_systemd)
    nodeprocs.stop_all(layout, remove=True)
    nodeprocs.save_start(layout, nodeprocs.StartRecord(
        systemd=use_systemd, runtime=args.runtime, agent_args=tuple(args.agent_arg),
        listen_join=args.listen_join,
        unit_dir=str(systemctl.unit_dir()) if use_systemd else ""))


def etcd_member(layout: datadir.Layout, cfg: datadir.NodeConfig, initial_cluster: str,
                state: str) -> etcd_server.EtcdServer:
    tls = ServerTLS(layout.ca_cert, layout.cert("etcd-server"), layout.key("etcd-server"),
                    layout.cert("etcd-peer"), layout.key("etcd-peer"))
    return etcd_server.EtcdServer(
        layout.etcd_data, host=cfg.advertise_addr, client_port=service.ETCD_CLIENT_PORT,
        peer_port=service.ETCD_PEER_PORT, log_path=layout.logs / "etcd.log", name=cfg.name,
        initial_cluster=initial_cluster, initial_cluster_state=state, tls=tls)


def issue_member_certs(layout: datadir.Layout, ca: pki_ca.CA, addr: str) -> None:
    """The etcd member's server and peer certificates for ``addr`` (and 127.0.0.1, so
    ``swctl`` on the machine itself may use the loopback)."""
    hosts = list(dict.fromkeys([addr, "127.0.0.1"]))
    if not layout.cert("etcd-server").exists():
        cert, key = certs.issue_server(ca, hosts)
        datadir.save_pem(layout, "etcd-server", pki_ca.cert_pem(cert), pki_ca.key_pem(key))
    if not layout.cert("etcd-peer").exists():
        cert, key = certs.issue_peer(ca, hosts)
        datadir.save_pem(layout, "etcd-peer", pki_ca.cert_pem(cert), pki_ca.key_pem(key))


def start_etcd(layout: datadir.Layout, server: etcd_server.EtcdServer) -> None:
    layout.logs.mkdir(parents=True, exist_ok=True)
    child = nodeprocs.start(layout, nodeprocs.ETCD, server.command())
    server.proc = child.popen
    try:
        server.wait_ready(60.0)
    except RuntimeError as exc:
        raise errors.CliError([f"the etcd member did not start: {str(exc).splitlines()[0]}",
                               f"  log: {server.log_path}"]) from None


def start_node_processes(layout: datadir.Layout, cfg: datadir.NodeConfig) -> None:
    """The controller-manager (managers), the agent and the role watcher, with the
    options ``start.json`` recorded, checked to survive their start."""
    rec = nodeprocs.load_start(layout)
    if rec is None:
        raise errors.CliError(f"{layout.start_file} is missing: run `swctl leave --force`, "
                              "then init/join again")
    names = [nodeprocs.MANAGER] if cfg.role == "manager" else []
    names += [nodeprocs.AGENT, nodeprocs.ROLE_WATCH]
    started = [(name, nodeprocs.start(layout, name, nodeprocs.argv_for(layout, name, cfg, rec)))
               for name in names]
    for what, child in started:
        nodeprocs.survives(child, what)


def root_bundle(layout: datadir.Layout) -> Bundle:
    return Bundle(layout.ca_cert, layout.cert("root"), layout.key("root"))


async def wait_node(layout: datadir.Layout, cfg: datadir.NodeConfig, bundle: Bundle,
                    timeout: float = NODE_READY_TIMEOUT) -> str:
    """The node's short ID once its agent has registered it ready ("" on timeout)."""
    from shoal.cli import node as node_verbs
    from shoal.crds import kinds
    from shoal.store import client

    info = kinds.Registry.builtin().lookup("nodes")
    store = await client.Store.connect(",".join(cfg.endpoints), prefix=cfg.prefix, tls=bundle)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                obj = await store.get(info, cfg.name)
                if obj.status.get("state") == "ready":
                    return node_verbs.short_id(obj)
            except (store_errors.NotFoundError, store_errors.UnavailableError):
                pass
            await asyncio.sleep(0.2)
    finally:
        await store.close()
    return ""


def join_command(token: str, addr: str) -> str:
    return f"    swctl join --token {token} {addr}"


# --- init ---

async def _bootstrap_etcd(layout: datadir.Layout, cfg: datadir.NodeConfig,
                          ring: sealed.Keyring) -> str:
    """Users, the node's role, the tokens, auth on; returns the worker token."""
    c = etcd.EtcdClient(",".join(cfg.endpoints), tls=root_bundle(layout))
    await c.connect(timeout=10.0)
    try:
        await access.grant_node(c, cfg.prefix, cfg.name)
        found = await tokens.ensure(c, cfg.prefix, ring)
        await rbac.enable_auth(c)
        return tokens.token_text(found, ring, layout.ca_cert.read_bytes(), "worker")
    finally:
        await c.close()


def make_pki(layout: datadir.Layout, name: str, addr: str) -> pki_ca.CA:
    """The CA and this first manager's certificates, each only if missing."""
    if layout.ca_cert.exists() and layout.key("ca").exists():
        ca = pki_ca.load_ca(layout.ca_cert, layout.key("ca"))
    else:
        ca = pki_ca.make_ca()
        datadir.save_pem(layout, "ca", ca.cert_pem, pki_ca.key_pem(ca.signing_key()))
    for cert_name, user in (("root", certs.ROOT_USER), ("node", certs.node_user(name))):
        if not layout.cert(cert_name).exists():
            cert, key = certs.issue_client(ca, user)
            datadir.save_pem(layout, cert_name, pki_ca.cert_pem(cert), pki_ca.key_pem(key))
    issue_member_certs(layout, ca, addr)
    return ca


def run_init(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    layout = datadir.Layout(opts.data_dir)
    refuse_if_member(layout)
    systemctl.wanted(args.no_systemd)  # a bad $SHOAL_SYSTEMD fails before anything is made
    name = node_name(args.name)
    addr = advertise_addr(args.advertise_addr)
    join_at = protocol.join_addr(addr, args.listen_join)
    cfg = datadir.NodeConfig(name=name, role="manager", advertise_addr=addr,
                             endpoints=(service.url("https", addr, service.ETCD_CLIENT_PORT),),
                             prefix=opts.prefix, join_addrs=(join_at,))
    with console.Spinner("making the cluster CA and certificates"):
        make_pki(layout, name, addr)
        ring = sealed.ensure(layout.keyring)
    prepare_start(layout, args)
    peer_url = service.url("https", addr, service.ETCD_PEER_PORT)
    server = etcd_member(layout, cfg, f"{name}={peer_url}", "new")
    with console.Spinner(f"starting the etcd member at {server.url}"):
        start_etcd(layout, server)
    worker_token = asyncio.run(_bootstrap_etcd(layout, cfg, ring))
    # Written before the processes start: they read the dir (and `leave` needs it).
    datadir.save_node(layout, cfg)
    with console.Spinner("starting the controller-manager and the agent"):
        start_node_processes(layout, cfg)
        node_id = asyncio.run(wait_node(layout, cfg, root_bundle(layout)))
    if not node_id:
        console.out(f"! node {name} did not report ready within {NODE_READY_TIMEOUT:g}s; see "
                    f"{layout.logs / 'agent.log'}")
    console.out("\n".join([
        f"Swarm initialized: current node ({node_id or name}) is now a manager.", "",
        "To add a worker to this swarm, run the following command:", "",
        join_command(worker_token, join_at), "",
        "To add a manager to this swarm, run 'swctl join-token manager' and follow the "
        "instructions.", ""]))
    return 0
