"""The cluster under test: 3 etcd members, 3 controller-managers and hollow agents.

What a 3-manager cluster runs, on one machine: etcd members on 127.0.0.1-3 serving
mutual TLS as ``swctl init`` makes them (``EtcdCluster``), ``swctl controller-manager``
cm-0..2 and one ``swctl agent --runtime hollow`` per node (n0..), each with a
``--hollow-state`` journal so its workloads outlive a SIGKILL of the agent as containers
would; every process is given every etcd endpoint. Each process is its own session and
is started again under the same name (and identity) after a kill, as a supervisor would.
With ``netns`` each agent runs in its own network namespace on a bridge
(``underlay.py``) and reaches the members only through it, at the bridge's address, which
makes partitions and lossy links injectable; otherwise nodes are plain host processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from bench.chaoslib import hosts
from bench.chaoslib.clocks import Clocks
from bench.chaoslib.underlay import Underlay
from shoal.pki.bundle import Bundle
from shoal.store import etcd_server

PREFIX = "/chaos"


class Cluster:
    def __init__(self, workdir: Path, nodes: int, start_delay: float = 0.2,
                 netns: bool = False, etcd_quota: int | None = None,
                 process_nodes: int = 0, clocks: bool = False) -> None:
        self.workdir = workdir
        #: The members' --quota-backend-bytes when the run injects etcd-full (else etcd's
        #: usual one); the controller-managers are told it (shoal.controllers.maintenance).
        self.etcd_quota = etcd_quota
        if not 0 <= process_nodes <= nodes:
            raise ValueError(f"process_nodes: {process_nodes} of {nodes} nodes")
        # The process runtime keeps its tasks in /var/lib/shoal/process/<node>, shared by
        # every run on the machine: its nodes' names carry the run's pid so two runs never
        # share (or sweep) a directory, and a killed run's is recognised (hosts.sweep).
        #: the nodes whose agents run real processes (--runtime process): the first K
        self.process_nodes = [f"{hosts.PROCESS_NODE}{i}-{os.getpid():x}"
                              for i in range(process_nodes)]
        self.node_names = [*self.process_nodes,
                           *(f"n{i}" for i in range(process_nodes, nodes))]
        #: with clock jumps, the agents and controller-managers run under libfaketime
        self.clocks = Clocks(workdir) if clocks else None
        self.managers = [f"cm-{i}" for i in range(3)]
        self.start_delay = start_delay
        self.underlay = Underlay(self.node_names) if netns else None
        extra = [self.underlay.host_address] if self.underlay is not None else []
        self.etcd = etcd_server.EtcdCluster(
            workdir / "etcd", 3, tls=True, extra_hosts=extra,
            quota_bytes=etcd_quota or etcd_server.QUOTA_BYTES)
        self.bundle: Bundle | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.stopped: set[str] = set()  # processes (or etcd members) under SIGSTOP

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.etcd.members]

    @property
    def env(self) -> dict[str, str]:
        assert self.bundle is not None
        env = dict(os.environ, SHOAL_ETCD=self.etcd.urls, SHOAL_PREFIX=PREFIX,
                   SHOAL_KEYRING=str(self.workdir / "keyring.json"), PYTHONUNBUFFERED="1",
                   SHOAL_ETCD_CA=str(self.bundle.ca), SHOAL_ETCD_CERT=str(self.bundle.cert),
                   SHOAL_ETCD_KEY=str(self.bundle.key))
        env.pop("SHOAL_DEBUG", None)
        if self.etcd_quota:
            env["SHOAL_ETCD_QUOTA_BYTES"] = str(self.etcd_quota)
        return env

    def node_env(self, name: str) -> dict[str, str]:
        """A process's environment: a namespaced node reaches etcd at the bridge."""
        env = self.env
        if self.underlay is not None and name in self.node_names:
            env["SHOAL_ETCD"] = ",".join(f"https://{self.underlay.host_address}:"
                                         f"{m.client_port}" for m in self.etcd.members)
        return env

    def argv(self, name: str) -> list[str]:
        if name in self.managers:
            return ["controller-manager", "--identity", name]
        if name in self.process_nodes:
            argv = self.process_argv(name)
        else:
            argv = ["agent", "--runtime", "hollow", "--name", name,
                    "--hollow-start-delay", str(self.start_delay),
                    "--hollow-state", str(self.journal(name))]
        if self.underlay is not None:
            argv += ["--address", self.underlay.links[name].address]
        return argv

    def swctl_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shoal.cli", *args]

    def journal(self, node: str) -> Path:
        return self.workdir / "hollow" / f"{node}.journal"

    def process_argv(self, name: str) -> list[str]:
        """A process-runtime agent: its own state dir for generated files, any free log
        port, no task networking on the host (each task still gets its own network
        namespace)."""
        return ["agent", "--runtime", "process", "--name", name,
                "--state-dir", str(self.workdir / "state" / name), "--logs-port", "0",
                "--dataplane", "none"]

    def host(self, node: str) -> hosts.Host:
        """What node ``node`` runs, read from outside its agent."""
        if node in self.process_nodes:
            return hosts.ProcessHost(hosts.PROCESS_STATE / node)
        return hosts.JournalHost(self.journal(node))

    def host_views(self) -> dict[str, hosts.Host]:
        return {n: self.host(n) for n in self.node_names}

    def process_env(self, name: str) -> dict[str, str]:
        """``node_env`` plus, with clock jumps, the process's own faked wall clock."""
        env = self.node_env(name)
        if self.clocks is not None:
            env.update(self.clocks.env(name))
        return env

    def start_etcd(self) -> None:
        if self.process_nodes:
            hosts.sweep()
        if self.underlay is not None:
            self.underlay.up()  # the bridge address must exist before etcd binds it
        self.etcd.start_all()
        self.bundle = self.etcd.client_bundle()

    def start(self, name: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self._logs.append(log)
        # `ip netns exec` execs the agent, so the recorded pid is still the agent's own.
        wrap = (self.underlay.exec_argv(name)
                if self.underlay is not None and name in self.node_names else [])
        self.procs[name] = subprocess.Popen(
            [*wrap, sys.executable, "-m", "shoal.cli", *self.argv(name)],
            env=self.process_env(name),
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        self.start_etcd()
        for name in [*self.managers, *self.node_names]:
            self.start(name)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def children(self, name: str) -> list[int]:
        """The process's children (an agent's heartbeat process), from /proc."""
        pid = self.pid(name)
        if pid is None:
            return []
        out: list[int] = []
        try:
            for thread in os.listdir(f"/proc/{pid}/task"):
                text = Path(f"/proc/{pid}/task/{thread}/children").read_text()
                out.extend(int(p) for p in text.split())
        except OSError:
            return []
        return out

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self.stopped.discard(name)

    def signal_pid(self, pid: int, sig: signal.Signals) -> bool:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def etcd_pid(self, i: int) -> int | None:
        proc = self.etcd.members[i].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        """Everything down (SIGCONT first: a stopped process cannot act on SIGTERM)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with_session(proc.pid, signal.SIGCONT)
                with_session(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with_session(proc.pid, signal.SIGKILL)
                proc.wait()
        for i, member in enumerate(self.etcd.members):
            pid = self.etcd_pid(i)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            member.kill()
        for log in self._logs:
            log.close()
        for node in self.process_nodes:  # task processes outlive their agent, by design
            hosts.ProcessHost(hosts.PROCESS_STATE / node).remove()
        if self.underlay is not None:
            self.underlay.down()


def with_session(pid: int, sig: signal.Signals) -> None:
    """Signal the process's whole session (it was started as its own): its helpers too."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
