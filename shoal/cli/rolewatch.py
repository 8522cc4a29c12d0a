"""``swctl role-watch``: the node-side half of ``node promote`` and ``node demote``.

``swctl node promote|demote`` run anywhere and change only what etcd holds (the Node's
``spec.role``; demote also removes the etcd member). Becoming or ceasing to be a manager
takes work on the machine itself -- an etcd member to start or stop, a controller-manager,
credentials to fetch or drop -- so every ``init``/``join`` node runs this small watcher
beside its agent (Swarm's daemon does the same on a role change).

Every couple of seconds it brings ``node.json``'s etcd endpoints up to date with the
member list, and compares its Node's ``spec.role`` with ``node.json``:

Under systemd (``start.json``, written by init/join) the processes it starts and stops
are units (``nodeprocs``): installed and enabled on promotion, disabled and removed on
demotion, and the remaining units rewritten whenever ``node.json`` changes, so that a
reboot starts what the data dir says.

* promoted: asks a manager's join endpoint (``POST /promote``, with its node certificate)
  for the manager material -- the endpoint adds the etcd member -- writes it, issues its
  etcd certificates, starts its member (``initial-cluster-state existing``), records the
  new role and endpoints, starts a controller-manager;
* demoted: stops its controller-manager and etcd member (already removed from etcd by
  ``node demote``), deletes the CA key, the root credentials, the keyring and the member's
  data, and records the worker role.

Each step is idempotent and ``node.json`` changes last, so a watcher killed half-way
redoes the step on its next look (a retried promotion reuses the member the endpoint
added). Hourly it also renews the node's certificates that are due
(``shoal.join.renewal``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import time
from typing import Any

import structlog

from shoal.cli import common, errors, init, join, nodeprocs
from shoal.crds import kinds
from shoal.join import client, datadir, protocol, renewal
from shoal.pki import ca as pki_ca
from shoal.store import client as store_client
from shoal.store import errors as store_errors
from shoal.store import etcd

log = structlog.get_logger("shoal.cli.rolewatch")

VERB = "role-watch"
INTERVAL = 2.0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(VERB, parents=parents,
                       description="Carry out promote/demote of this node (started by "
                                   "`swctl init`/`join`; runs until stopped).")
    p.add_argument("--listen-join", type=int, default=protocol.DEFAULT_PORT, metavar="PORT")
    p.set_defaults(func=run, error_code=1, keeps_logging=True)


def promote_here(layout: datadir.Layout, cfg: datadir.NodeConfig, join_port: int) -> None:
    ca_pem = layout.ca_cert.read_bytes()
    resp = None
    for addr in cfg.join_addrs:
        host, port = protocol.split_addr(addr)
        try:
            resp = client.promote(host, port, ca_pem, str(layout.cert("node")),
                                  str(layout.key("node")), cfg.advertise_addr)
            break
        except client.JoinError as exc:
            log.warning("promotion refused or failed", node=cfg.name, via=addr, error=str(exc))
    if resp is None or resp.manager is None:
        return
    join.write_manager_credentials(layout, resp.manager)
    init.issue_member_certs(layout, pki_ca.load_ca(layout.ca_cert, layout.key("ca")),
                            cfg.advertise_addr)
    own_join = protocol.join_addr(cfg.advertise_addr, join_port)
    manager_cfg = dataclasses.replace(
        cfg, role="manager", endpoints=resp.endpoints,
        join_addrs=tuple(dict.fromkeys([own_join, *resp.join_addrs, *cfg.join_addrs])))
    if not nodeprocs.running(layout, nodeprocs.ETCD):
        init.start_etcd(layout, init.etcd_member(layout, manager_cfg,
                                                 resp.manager.initial_cluster, "existing"))
    datadir.save_node(layout, manager_cfg)
    if not nodeprocs.running(layout, nodeprocs.MANAGER):
        nodeprocs.start(layout, nodeprocs.MANAGER,
                        nodeprocs.manager_argv(layout, manager_cfg, join_port))
    nodeprocs.refresh_units(layout)  # the agent's unit: its role and endpoints
    log.info("promoted: etcd member and controller-manager started", node=cfg.name)


def demote_here(layout: datadir.Layout, cfg: datadir.NodeConfig) -> None:
    # Under systemd their units are disabled and removed too: a reboot must not bring a
    # demoted node's member back.
    nodeprocs.stop_all(layout, only=(nodeprocs.MANAGER, nodeprocs.ETCD), remove=True)
    for name in ("root", "etcd-server", "etcd-peer"):
        layout.cert(name).unlink(missing_ok=True)
        layout.key(name).unlink(missing_ok=True)
    layout.key("ca").unlink(missing_ok=True)
    layout.keyring.unlink(missing_ok=True)
    shutil.rmtree(layout.etcd_data, ignore_errors=True)
    own = f"://{cfg.advertise_addr}:"
    own_join = [a for a in cfg.join_addrs if protocol.split_addr(a)[0] == cfg.advertise_addr]
    datadir.save_node(layout, dataclasses.replace(
        cfg, role="worker", endpoints=tuple(e for e in cfg.endpoints if own not in e),
        join_addrs=tuple(a for a in cfg.join_addrs if a not in own_join)))
    nodeprocs.refresh_units(layout)
    log.info("demoted: controller-manager and etcd member stopped", node=cfg.name)


async def _refresh_endpoints(layout: datadir.Layout, cfg: datadir.NodeConfig,
                             store: store_client.Store) -> None:
    """Keep ``node.json``'s endpoints the members' client URLs: managers join and leave
    after this node did (the first manager knew only its own), and swctl and processes
    started later must find every member (running processes follow the members
    themselves: ``shoal.store.etcd``). Learners and members not yet started are left out,
    as the running clients leave them out."""
    scheme = etcd.parse_endpoints(cfg.endpoints)[0].scheme
    members = await store.etcd.member_list()
    urls = tuple(sorted({ep.url for ep in etcd.member_endpoints(members, scheme)}))
    if urls and urls != tuple(sorted(cfg.endpoints)):
        datadir.save_node(layout, dataclasses.replace(cfg, endpoints=urls))
        # The units' command lines carry the endpoints: the next start uses the new ones.
        rewritten = await asyncio.to_thread(nodeprocs.refresh_units, layout)
        log.info("etcd endpoints updated", node=cfg.name, endpoints=list(urls),
                 units=rewritten)


async def _renew(layout: datadir.Layout) -> float:
    """Renew what is due; seconds until the next look."""
    try:
        cfg = datadir.load_node(layout)
        renewed = await asyncio.to_thread(renewal.renew_due, layout, cfg)
    except (datadir.DataDirError, OSError, ValueError) as exc:
        log.warning("certificate check failed", node=layout.root.name, error=str(exc))
        return renewal.RETRY_EVERY
    if renewed:
        log.info("certificates renewed", node=cfg.name, certs=renewed)
    # A worker whose renewal found no manager tries again soon.
    still_due = renewal.due(layout.cert("node").read_bytes())
    return renewal.RETRY_EVERY if still_due else renewal.CHECK_EVERY


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    from shoal.runtime import logging as runtime_logging

    runtime_logging.configure()
    layout = datadir.Layout(opts.data_dir)
    info = kinds.Registry.builtin().lookup("nodes")
    store: store_client.Store | None = None
    next_renewal = 0.0
    try:
        while True:
            if time.monotonic() >= next_renewal:
                next_renewal = time.monotonic() + await _renew(layout)
            try:
                cfg = datadir.load_node(layout)
                if store is None:
                    node_tls = dataclasses.replace(
                        opts.tls, cert=layout.cert("node"), key=layout.key("node")) \
                        if opts.tls is not None else None
                    store = await store_client.Store.connect(
                        ",".join(cfg.endpoints), cfg.prefix, tls=node_tls)
                node = await store.get(info, cfg.name)
                await _refresh_endpoints(layout, cfg, store)
                want = str(node.spec.get("role") or "worker")
                if want == "manager" and cfg.role == "worker":
                    await asyncio.to_thread(promote_here, layout, cfg, args.listen_join)
                elif want == "worker" and cfg.role == "manager":
                    await asyncio.to_thread(demote_here, layout, cfg)
            except (store_errors.StoreError, datadir.DataDirError, errors.CliError,
                    OSError, ValueError) as exc:
                log.warning("role check failed; trying again", node=layout.root.name,
                            error=str(exc))
                if store is not None and isinstance(exc, store_errors.UnavailableError):
                    await store.close()
                    store = None
            await asyncio.sleep(INTERVAL)
    except asyncio.CancelledError:
        return 0
    finally:
        if store is not None:
            await store.close()
