"""What ``swctl down`` removes besides processes: the workloads of the cluster's nodes and
the network-namespace underlay.

What it owns: turning the ``nodes`` and ``underlay`` records of ``cluster.json`` into
nothing left behind. Workloads outlive their agents on purpose (a restarted agent adopts
them), so stopping the agents leaves them running; a cluster that is taken down must
remove them explicitly:

* docker: every container labelled ``shoal.io/node=<node>`` for the cluster's nodes,
  through the docker driver (:func:`shoal.agent.docker.driver.remove_node_containers`:
  force-removed with their anonymous volumes; named volumes are user data and stay);
* process: every task the process driver keeps for those nodes (workload, supervisor and
  files under ``/var/lib/shoal/process/<node>``), through the driver's own ``remove``;
* the tmpfs holding the nodes' task secrets and configs (``shoal.agent.taskfiles``);
* the underlay (``netnodes``): processes still inside the node namespaces, then the
  namespaces, veths and bridge;
* for a local node (the agent ran in this namespace): exactly the host-firewall rules
  the agent added (``shoal.net.hostfw``; the user's rules are never touched), and its
  dataplane: Shoal's bridges, VXLAN devices and veths (``naming.is_ours``) and the
  ``ip shoal`` nftables table. An agent that stops leaves them on purpose (its successor
  adopts them); a cluster taken down must not leave an overlay subnet routed on the host.

Each step is idempotent and tolerant of a half-done earlier run, so ``down`` can be
interrupted and repeated. dockerd is never started for this: if it does not answer, it
holds no containers we could remove now, and a notice says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from shoal.cli import netnodes

log = structlog.get_logger("shoal.cli.leftovers")

REMOVE_PARALLELISM = 8


def remove_containers(nodes: Sequence[str], notice: Callable[[str], None]) -> int:
    """Force-remove every container of ``nodes`` through the docker driver; how many were
    removed."""
    if not nodes:
        return 0
    try:
        from shoal.agent.docker import dockerd
        from shoal.agent.docker import driver as docker_driver
    except ImportError:
        return 0  # no docker SDK: this installation never ran containers
    url = dockerd.docker_url()
    if not dockerd.ping(url):
        notice(f"dockerd does not answer at {url}: containers of {', '.join(nodes)} (if "
               "any) are left; run `swctl down` again once it is up")
        return 0
    removed, failed = docker_driver.remove_node_containers(
        nodes, url, parallelism=REMOVE_PARALLELISM)
    if failed:
        notice(f"{len(failed)} container(s) could not be removed (run `swctl down` again): "
               f"{failed[0]}")
    if removed:
        log.info("removed containers", nodes=list(nodes), count=removed)
    return removed


async def remove_processes_async(nodes: Sequence[str]) -> int:
    """:func:`remove_processes` for callers already in an event loop."""
    from shoal.agent.process import driver as process_driver

    count = 0
    for node in nodes:
        if not (process_driver.DEFAULT_STATE_DIR / "process" / node).is_dir():
            continue  # never ran a process task: do not create its directory now
        driver = process_driver.ProcessExecutor(node)
        try:
            managed = await driver.list_managed()
            await asyncio.gather(*(driver.remove(m.task_uid) for m in managed))
            count += len(managed)
        finally:
            await driver.close()
    return count


def remove_processes(nodes: Sequence[str]) -> int:
    """Stop and remove the process driver's tasks of ``nodes``; how many there were."""
    if not nodes:
        return 0
    try:
        return asyncio.run(remove_processes_async(nodes))
    except ImportError:
        return 0


def remove_firewall_rules() -> int:
    """Exactly the rules the agent added to this namespace's host firewall (comment
    ``shoal``; ``shoal.net.hostfw``), nothing of the user's; how many were removed."""
    from shoal.net.hostfw import HostFirewall

    report = asyncio.run(HostFirewall().remove())
    for problem in report.problems:
        log.warning("firewall rules left", problem=problem)
    return len(report.changes)


def remove_host_dataplane() -> int:
    """The local node's overlay links and balancer table in this namespace; how many
    things were removed."""
    from shoal.net import lb_nftables, overlay

    async def remove() -> int:
        # The MTU is given so nothing is probed: teardown only deletes.
        report = await overlay.OverlayNode("127.0.0.1", underlay_mtu=1500).teardown()
        balancer = lb_nftables.NftablesLoadBalancer()
        try:
            await balancer.teardown()  # "table {} / delete table": fine when absent
        except Exception as exc:  # nft missing or refused: say so and go on
            log.warning("balancer table left", error=str(exc))
        finally:
            await balancer.close()
        return len(report.changes)

    return asyncio.run(remove())


def remove_task_files(nodes: Sequence[str]) -> int:
    """Unmount the tmpfs holding each node's task secrets and configs (an agent unmounts
    it itself only once no task has files left), in dockerd's mount namespace and ours;
    the workloads that mounted them are gone by now. How many nodes had one."""
    from shoal.agent import taskfiles, tmpfs
    from shoal.agent.agent import DEFAULT_STATE_DIR  # swctl up leaves --state-dir alone
    from shoal.agent.docker import dockerd
    pids = {None, dockerd.daemon_pid()}
    count = 0
    for node in nodes:
        try:
            count += tmpfs.discard(taskfiles.node_root(DEFAULT_STATE_DIR, node), pids)
        except OSError as exc:
            log.warning("cannot unmount a node's task files", key=f"node/{node}",
                        error=str(exc))
    return count


def remove_all(nodes: Sequence[str], underlay: dict[str, Any] | None,
               notice: Callable[[str], None]) -> list[str]:
    """Everything above, in an order that leaves nothing running: first whatever still
    runs in the node namespaces (an agent restarted by hand would otherwise report the
    removals or start over), then workloads, then the namespaces and the bridge. Returns
    one line per kind of thing removed, for ``down`` to print."""
    done: list[str] = []
    net = netnodes.Underlay.from_record(underlay) if underlay else None
    if net is not None:
        stray = netnodes.end_processes(net)
        if stray:
            done.append(f"{stray} process{'es' if stray != 1 else ''} left in node "
                        "namespaces stopped")
    processes = remove_processes(nodes)
    if processes:
        done.append(f"{processes} process task{'s' if processes != 1 else ''} removed")
    containers = remove_containers(nodes, notice)
    if containers:
        done.append(f"{containers} container{'s' if containers != 1 else ''} removed")
    files = remove_task_files(nodes)
    if files:
        done.append(f"task secrets and configs of {files} node{'s' if files != 1 else ''} "
                    "removed")
    if nodes and net is None:
        # The local node's agent ran in this namespace: its firewall rules (hostfw) go
        # too; namespace nodes take theirs with their namespaces.
        rules = remove_firewall_rules()
        if rules:
            done.append(f"{rules} Shoal firewall rule{'s' if rules != 1 else ''} removed")
        links = remove_host_dataplane()
        if links:
            done.append(f"{links} Shoal network link{'s' if links != 1 else ''} removed")
    if net is not None:
        removed = netnodes.teardown(net)
        if removed:
            done.append(f"underlay removed ({len(net.nodes)} node namespaces, bridge "
                        f"{net.bridge})")
    return done
