"""The join endpoint inside ``swctl controller-manager --data-dir DIR --listen-join
ADDR:PORT``: every manager serves it, so a joiner may knock on any of them.

What it owns: wiring -- the manager's credentials from its data dir
(``service.Credentials``), its own store connection (etcd as root), the HTTPS server
with the manager's etcd server certificate (which carries ``etcd.shoal``, the name
joiners verify) and the entry in ``<prefix>/cluster/join-endpoints`` that ``swctl
join-token`` prints. The endpoint lives and dies with the controller-manager.
"""

from __future__ import annotations

import asyncio

import structlog

from shoal.cli import common, errors
from shoal.join import datadir, protocol, server, service

log = structlog.get_logger("shoal.cli.joinendpoint")


def parse_listen(text: str) -> tuple[str, int]:
    try:
        return protocol.split_addr(text)
    except ValueError as exc:
        raise errors.CliError(f"--listen-join {exc}") from None


async def serve(opts: common.GlobalOptions, listen: str) -> None:
    """Serve the join endpoint until cancelled."""
    host, port = parse_listen(listen)
    layout = datadir.Layout(opts.data_dir)
    cfg = datadir.load_node(layout)
    missing = datadir.missing(layout, ["ca", "root", "etcd-server"])
    if missing:
        raise errors.CliError(f"cannot serve the join endpoint: {', '.join(map(str, missing))} "
                              "missing (only a manager's data dir has them)")
    creds = service.Credentials.load(layout)
    tls = server.server_context(str(layout.ca_cert), str(layout.cert("etcd-server")),
                                str(layout.key("etcd-server")))
    async with common.open_store(opts) as store:
        svc = service.JoinService(store, creds)
        srv = server.JoinServer(host, port, tls, svc.routes())
        await srv.start()
        where = protocol.join_addr(host, srv.port)
        try:
            while True:
                try:
                    await service.publish_join_addr(store.etcd, store.prefix, cfg.name, where)
                    break
                except Exception as exc:  # etcd not up yet: keep serving, try again
                    log.warning("cannot publish the join endpoint yet", node=cfg.name,
                                error=str(exc))
                    await asyncio.sleep(1.0)
            log.info("join endpoint published", node=cfg.name, address=where)
            await asyncio.Event().wait()
        finally:
            await srv.close()
