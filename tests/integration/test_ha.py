"""High availability: a 3-member etcd and 3 controller-managers lose a member and carry on.

One cluster serves the module: etcd members on 127.0.0.1-3 (``EtcdCluster``) serving
mutual TLS as ``swctl init`` clusters do, three ``swctl controller-manager`` processes
(cm-0..2, each controller leader-elected among them) and a hollow agent with three nodes,
every process given every etcd endpoint and a client certificate.
While a loop of ``swctl`` commands runs (reads and writes, each a fresh process, as a
user's shell would run them), the etcd leader is SIGKILLed in the middle of a scale to
200 tasks, then of a rolling update: every command must succeed, the service must
converge, and the killed member must rejoin with everything written while it was dead.
Then the controller-manager leading the controllers is SIGKILLed: a standby must take
each of its controllers within the lease TTL (+1 s) and keep placing tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.pki.bundle import Bundle
from shoal.runtime import leader
from shoal.store import client, etcd_server
from tests.helpers import eventually, eventually_sync, stop_processes
from tests.integration.cli_support import Cluster, Swctl

PREFIX = "/ha"
MANAGERS = ["cm-0", "cm-1", "cm-2"]
TASKS = 200
#: The controller-managers' leader lease TTL (``swctl controller-manager``'s default).
LEASE_TTL = leader.DEFAULT_TTL

WEB = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  template: {{image: "{image}", command: [httpd, -f, -p, "8080"]}}
  updateConfig: {{parallelism: 50, monitor: 0.5s}}
"""


class TLSSwctl(Swctl):
    """``swctl`` (and the processes ``Cluster`` starts) presenting a client certificate."""

    bundle: Bundle

    @property
    def env(self) -> dict[str, str]:
        return dict(super().env, SHOAL_ETCD_CA=str(self.bundle.ca),
                    SHOAL_ETCD_CERT=str(self.bundle.cert), SHOAL_ETCD_KEY=str(self.bundle.key))


class HA:
    def __init__(self, etcd: etcd_server.EtcdCluster, swctl: TLSSwctl, procs: Cluster) -> None:
        self.etcd = etcd
        self.swctl = swctl
        self.procs = procs
        self.bundle = swctl.bundle

    def swctl_on(self, url: str) -> TLSSwctl:
        one = TLSSwctl(url, PREFIX, self.swctl.cwd)
        one.bundle = self.bundle
        return one

    async def store(self) -> client.Store:
        return await client.Store.connect(self.etcd.urls, PREFIX, tls=self.bundle)


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    base = tmp_path_factory.mktemp("ha")
    members = etcd_server.EtcdCluster(base / "etcd", 3, tls=True)
    members.start_all()
    swctl = TLSSwctl(members.urls, PREFIX, base)
    swctl.bundle = members.client_bundle()
    procs = Cluster(swctl)
    try:
        for name in MANAGERS:
            procs.start(name, "controller-manager", "--identity", name)
        procs.start("agent", "agent", "--runtime", "hollow", "--count", "3", "--name", "n",
                    "--hollow-start-delay", "0.05")

        def ready() -> bool:
            rows = swctl("node", "ls").stdout.splitlines()[1:]
            return sum("ready" in row.split() for row in rows) >= 3
        eventually_sync(ready, 30, "3 hollow nodes ready")
        yield HA(members, swctl, procs)
    finally:
        stop_processes(list(procs.procs.values()), timeout=10)
        for log in procs.logs:
            log.close()
        for member in members.members:
            member.kill()


class CommandLoop:
    """``swctl`` commands run one after another in a thread until stopped; every result
    is kept, so the test can say how many ran and show any that failed."""

    def __init__(self, swctl: Swctl) -> None:
        self.swctl = swctl
        self.results: list[tuple[tuple[str, ...], int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        replicas = 1
        while not self._stop.is_set():
            replicas = 3 - replicas  # 2, 1, 2, ...: a write that always changes something
            for args in (("get", "services"), ("scale", f"probe={replicas}", "--detach"),
                         ("node", "ls"), ("get", "service", "probe", "-o", "json")):
                proc = self.swctl(*args, expect=None, timeout=60)
                self.results.append((args, proc.returncode, proc.stderr[-2000:]))

    @contextlib.contextmanager
    def running(self) -> Iterator[CommandLoop]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(90)

    def assert_all_succeeded(self, during: str) -> None:
        failed = [r for r in self.results if r[1] != 0]
        print(f"\n{during}: {len(self.results)} swctl commands ran, {len(failed)} failed")
        assert self.results, "no swctl command ran"
        assert not failed, "\n".join(f"swctl {' '.join(a)} exited {rc}:\n{err}"
                                     for a, rc, err in failed)


def replicas(swctl: Swctl, service: str) -> str:
    """The REPLICAS cell (running/desired) of ``swctl get service``."""
    out = swctl("get", "service", service).stdout
    match = re.search(r"\b(\d+/\d+)\b", out.splitlines()[-1])
    return match.group(1) if match else out


def apply(swctl: Swctl, name: str, replicas: int, image: str = "shoal/busybox:1.0",
          *flags: str) -> None:
    path = swctl.write(f"{name}.yaml", WEB.format(name=name, replicas=replicas, image=image))
    swctl("apply", "-f", str(path), *flags, timeout=90)


def service_status(swctl: Swctl, name: str) -> dict[str, Any]:
    obj = json.loads(swctl("get", "service", name, "-o", "json").stdout)
    return dict(obj.get("status") or {})


def running_images(swctl: Swctl, service: str) -> collections.Counter[str]:
    items = json.loads(swctl("get", "tasks", "-o", "json").stdout)["items"]
    return collections.Counter(
        t["spec"]["template"]["image"] for t in items
        if t["spec"]["serviceName"] == service and t["spec"]["desiredState"] == "running"
        and t["status"].get("state") == "running")


def assert_rejoins(ha: HA, member: int, service: str, want: str) -> None:
    """Restart ``member``; it must serve, by itself, what was written while it was dead."""
    ha.etcd.start(member)
    alone = ha.swctl_on(ha.etcd.members[member].url)

    def caught_up() -> bool:
        obj = json.loads(alone("get", "service", service, "-o", "json").stdout)
        return f"{obj['spec']['replicas']}" == want.split("/")[1]
    eventually_sync(caught_up, 30, f"restarted member m{member} serving {service}")
    ha.etcd.leader()  # raises unless the three members agree on one leader


async def leaders(store: client.Store) -> dict[str, str]:
    """Controller name -> identity of the manager holding its leader lease."""
    kvs, _ = await store.raw_list(store.raw_key(*leader.LEASES) + b"/")
    return {kv.key.decode().rsplit("/", 1)[1]: kv.value.decode() for kv in kvs}


def controller_leaders(ha: HA) -> dict[str, str]:
    async def read() -> dict[str, str]:
        store = await ha.store()
        try:
            return await leaders(store)
        finally:
            await store.close()
    return asyncio.run(read())


def test_etcd_leader_killed_during_a_scale_to_200_tasks(ha: HA) -> None:
    swctl = ha.swctl
    apply(swctl, "probe", 1)
    apply(swctl, "web", 1)
    led = controller_leaders(ha)
    with CommandLoop(swctl).running() as loop:
        swctl("scale", f"web={TASKS}", "--detach")
        victim = ha.etcd.leader()
        ha.etcd.kill(victim)  # the orchestrator and scheduler are writing 199 tasks now
        eventually_sync(lambda: replicas(swctl, "web") == f"{TASKS}/{TASKS}", 90,
                        f"web at {TASKS}/{TASKS} after killing etcd member m{victim}")
        assert_rejoins(ha, victim, "web", f"{TASKS}/{TASKS}")
    loop.assert_all_succeeded(f"killing etcd leader m{victim} during a scale to {TASKS}")
    # An etcd election is no reason for controllers to change hands: a manager whose
    # keepalives went unanswered meanwhile resumes on its lease (shoal.runtime.leader).
    assert controller_leaders(ha) == led


def test_etcd_leader_killed_during_a_rolling_update(ha: HA) -> None:
    swctl = ha.swctl
    led = controller_leaders(ha)
    with CommandLoop(swctl).running() as loop:
        apply(swctl, "web", TASKS, "shoal/busybox:2.0", "--detach")
        eventually_sync(lambda: (service_status(swctl, "web").get("update") or {}).get(
            "state") == "updating", 30, "the rolling update under way")
        victim = ha.etcd.leader()
        ha.etcd.kill(victim)
        eventually_sync(lambda: (service_status(swctl, "web").get("update") or {}).get(
            "state") == "completed", 120, "the rolling update completed")
        eventually_sync(lambda: running_images(swctl, "web") == {"shoal/busybox:2.0": TASKS},
                        30, f"{TASKS} tasks running the new image")
        assert_rejoins(ha, victim, "web", f"{TASKS}/{TASKS}")
    loop.assert_all_succeeded(f"killing etcd leader m{victim} during a rolling update")
    assert controller_leaders(ha) == led


async def test_standby_manager_takes_each_controller_within_the_lease_ttl(ha: HA) -> None:
    store = await ha.store()
    try:
        held = await leaders(store)
        victim, _ = collections.Counter(held.values()).most_common(1)[0]
        theirs = sorted(name for name, who in held.items() if who == victim)
        killed_at = time.monotonic()
        ha.procs.procs[victim].kill()
        taken: dict[str, tuple[str, float]] = {}

        async def all_taken() -> bool:
            now = await leaders(store)
            for name in theirs:
                if name not in taken and now.get(name, victim) != victim:
                    taken[name] = (now[name], time.monotonic() - killed_at)
            return len(taken) == len(theirs)
        await eventually(all_taken, LEASE_TTL + 10, interval=0.05,
                         what=f"standbys taking {theirs} from {victim}")
        print(f"\ncontrollers taken over from {victim}: " + ", ".join(
            f"{name} by {who} in {took:.2f}s" for name, (who, took) in taken.items()))
        slow = {name: took for name, (_, took) in taken.items() if took > LEASE_TTL + 1}
        assert not slow, f"taken over later than the lease TTL ({LEASE_TTL:g} s) + 1 s: {slow}"
        # The new leaders work: a scale is placed and runs.
        await asyncio.to_thread(ha.swctl, "scale", f"web={TASKS + 1}", "--detach")
        await eventually(lambda: asyncio.to_thread(
            lambda: replicas(ha.swctl, "web") == f"{TASKS + 1}/{TASKS + 1}"), 30,
            what="the scale placed by the new leaders")
    finally:
        await store.close()
