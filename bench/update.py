"""Rolling-update benchmark: an image change on N replicas with real containers, Shoal
beside Docker Swarm mode doing the same update in the same run (issue 13).

    python bench/update.py [--replicas 50] [--settings 1/stop-first,5/start-first,...]
                           [--monitor 1] [--health-interval 2] [--no-swarm]

Root. The service on both sides: N replicas of ``httpd`` in ``shoal/busybox:v1`` (the
test image plus ``/www/variant``, ``ensure_variant_image``), on an overlay network behind
a VIP, with a health check (``nc`` to port 80, every 2 s: every check is a ``runc
exec``, and 50 containers checked every 0.5 s kept this 2-core machine at a load average
near 100), a process that ends at once on SIGTERM, and ``updateConfig {parallelism P,
order O, delay 0, monitor M, failureAction pause}``. Each measurement creates the
service afresh (so only one side's containers run at a time), waits for N running,
writes ``shoal/busybox:v2`` (another layer and id) together with that setting's update
config in one write, times, from just before the write, and removes the service:

* **all new running**: N tasks of the new image desired running and ``running``, and no
  task of the old image still ``running`` (the same rule on both sides, polled every
  50 ms: Shoal's tasks from etcd, Swarm's from its API);
* **completed**: the system's own word (Shoal ``status.update.state``, Swarm
  ``UpdateStatus.State``). Swarm waits ``monitor`` after its last batch before saying
  so; Shoal says so when the last task runs, so this column favours Shoal by about M;
* **failed requests** (start-first only, Shoal): a container on the overlay network
  sends HTTP requests through the VIP one after another during the whole update
  (``tests/e2e/nettool.py load``); any error, timeout or non-200 reply counts. Swarm's
  VIPs need IPVS, which this kernel lacks, so Swarm has no such figure here.

Shoal: ``swctl up -d --nodes 1 --runtime docker`` under the run's own names (one
namespace node, its agent, etcd, the controller-manager); ``swctl down`` at the end.
Swarm: a private dockerd in a network namespace of its own (own data root, exec root,
socket, pid file, cgroup parent; ``bench.swarmd.SwarmDaemon``), ``docker swarm init``
there, the images given by id (``--no-resolve-image``: no registry lookup); the daemon,
its state and the namespace are removed at the end, also on failure or Ctrl-C. Swarm and
Shoal alternate which goes first at each setting, so a drifting machine load favours
neither.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import docker
import docker.errors
import docker.types
import structlog

from bench.common import load_average, say
from bench.shoalup import ShoalUp
from bench.swarmd import SwarmDaemon
from shoal.agent.docker.dockerd import ensure_dockerd
from shoal.agent.docker.driver import API_VERSION
from shoal.agent.docker.image import ensure_variant_image
from shoal.crds import kinds
from shoal.crds import taskstates as ts
from shoal.runtime import cas

REG = kinds.Registry.builtin()
SERVICES, TASKS = REG.lookup("services"), REG.lookup("tasks")
IMAGES = {"v1": "shoal/busybox:v1", "v2": "shoal/busybox:v2"}
NETTOOL = str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "e2e" / "nettool.py")
# Ends at once on SIGTERM, so no stop grace period hides the orchestration's own time.
HTTPD = ["sh", "-c", "trap 'exit 0' TERM; hostname > /www/index.html; "
                     "httpd -f -p 80 -h /www & wait"]
HEALTH_CMD = "echo | nc -w 1 127.0.0.1 80 > /dev/null"
HEALTH_TIMEOUT, HEALTH_RETRIES, HEALTH_START = 2.0, 3, 60.0
GRACE = 2.0
NETWORK = "benchnet"
DEFAULT_SETTINGS = ",".join(f"{p}/{o}" for o in ("stop-first", "start-first")
                            for p in (1, 5, 0))


@dataclasses.dataclass
class Run:
    all_new: float
    completed: float
    requests: int | None = None
    failed: int | None = None
    failures: list[str] = dataclasses.field(default_factory=list)


# --- Shoal --------------------------------------------------------------------------------


class Shoal(ShoalUp):
    """The one-node cluster (``bench.shoalup``) and the update measured on it."""

    def __init__(self, tmp: pathlib.Path, tag: str, replicas: int) -> None:
        super().__init__(tmp, tag, "update")
        self.replicas = replicas

    def base(self) -> str:
        """The network and the VIP client, deployed once."""
        docs = [
            {"apiVersion": "shoal.io/v1", "kind": "Network", "metadata": {"name": NETWORK},
             "spec": {}},
            {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "client"},
             "spec": {"replicas": 1, "networks": [NETWORK],
                      "template": {"image": IMAGES["v1"], "command": ["sleep", "100000"],
                                   "stopGracePeriod": "1s"}}}]
        return "\n---\n".join(json.dumps(d) for d in docs)

    def web(self, health_interval: float) -> str:
        template: dict[str, Any] = {"image": IMAGES["v1"], "command": HTTPD,
                                    "stopGracePeriod": f"{GRACE}s"}
        if health_interval > 0:
            template["healthcheck"] = {"test": ["CMD-SHELL", HEALTH_CMD],
                                       "interval": f"{health_interval}s",
                                       "timeout": f"{HEALTH_TIMEOUT}s",
                                       "retries": HEALTH_RETRIES,
                                       "startPeriod": f"{HEALTH_START}s"}
        return json.dumps({"apiVersion": "shoal.io/v1", "kind": "Service",
                           "metadata": {"name": "web"},
                           "spec": {"replicas": self.replicas, "networks": [NETWORK],
                                    "template": template}})

    async def deploy(self, manifest: str) -> None:
        await asyncio.to_thread(self.swctl, "apply", "-f", "-", "--verify-window", "0",
                                "--timeout", "600", input=manifest, timeout=660)

    async def remove_web(self, api: Any, timeout: float = 300) -> None:
        """Delete ``web``; return once its tasks and containers are gone."""
        assert self.store is not None
        await self.store.delete(SERVICES, "web", "default")
        deadline = time.monotonic() + timeout
        label = {"label": [f"{ts.SERVICE_LABEL}=web", f"shoal.io/node={self.node}"]}
        while await self.of("web") or await asyncio.to_thread(
                api.containers, all=True, filters=label):
            if time.monotonic() > deadline:
                raise TimeoutError("Shoal: web's tasks or containers still there")
            await asyncio.sleep(0.2)

    async def of(self, service: str) -> list[Any]:
        return await self.tasks(selector=f"{ts.SERVICE_LABEL}={service}")

    async def vip(self) -> str:
        assert self.store is not None
        svc = await self.store.get(SERVICES, "web", "default")
        return str(next(v["address"] for v in svc.status["endpoint"]["virtualIPs"]
                        if v["network"] == NETWORK)).split("/")[0]

    async def client_pid(self, api: Any) -> int:
        (task,) = [t for t in await self.of("client")
                   if ts.is_active_desired(t) and ts.is_running(t)]
        return int(api.inspect_container(task.status["containerId"])["State"]["Pid"])

    async def update(self, image: str, parallelism: int, order: str, monitor: float,
                     timeout: float) -> Run:
        assert self.store is not None
        svc = await self.store.get(SERVICES, "web", "default")

        def change(s: Any) -> None:
            s.spec["template"]["image"] = image
            s.spec["updateConfig"] = {"parallelism": parallelism, "order": order,
                                      "delay": "0s", "monitor": f"{monitor}s",
                                      "failureAction": "pause", "maxFailureRatio": 0}
        t0 = time.monotonic()
        written = await cas.mutate(self.store, SERVICES, svc, change)
        assert written is not None, "the service is gone"
        generation = written.metadata.generation
        all_new = completed = None
        while all_new is None or completed is None:
            now = time.monotonic() - t0
            if now > timeout:
                raise TimeoutError(f"Shoal: update not done after {timeout:.0f} s")
            if all_new is None:
                tasks = await self.of("web")
                new = [t for t in tasks if t.spec["template"]["image"] == image
                       and ts.is_active_desired(t) and ts.is_running(t)]
                old = [t for t in tasks if t.spec["template"]["image"] != image
                       and ts.is_running(t)]
                if len(new) == self.replicas and not old:
                    all_new = now
            if completed is None:
                svc = await self.store.get(SERVICES, "web", "default")
                update = svc.status.get("update") or {}
                if update.get("state") == "completed" and update.get("generation",
                                                                     generation) >= generation:
                    completed = now
                elif update.get("state") == "paused":
                    raise RuntimeError(f"Shoal: update paused: {update.get('message')}")
            await asyncio.sleep(0.05)
        return Run(all_new, completed)


class Load:
    """``nettool load`` inside a container's network namespace, through the VIP."""

    def __init__(self, pid: int, host: str) -> None:
        # Blocking until the first reply: construct it from a thread.
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, NETTOOL, "load", host,
             "80", "/variant"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "started":
            self.proc.kill()
            raise RuntimeError(f"the VIP client did not get a first reply: {line!r}")

    def finish(self) -> dict[str, Any]:
        out, _ = self.proc.communicate("stop\n", timeout=30)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- Swarm --------------------------------------------------------------------------------


class Swarm:
    """Swarm mode on a private dockerd in a network namespace of its own."""

    def __init__(self, tmp: pathlib.Path, tag: str, replicas: int) -> None:
        self.netns = f"shoal-bench-upd-{tag}"
        self.daemon = SwarmDaemon(tmp / "swarm-dockerd.log", name="shoal-bench-update-swarm",
                                  netns=self.netns)
        self.replicas = replicas
        self.ids: dict[str, str] = {}

    def start(self) -> None:
        self.daemon.start()
        api = self.daemon.api
        for variant, image in IMAGES.items():
            ensure_variant_image(api, image, variant)
            self.ids[image] = str(api.inspect_image(image)["Id"])
        api.create_network(NETWORK, driver="overlay", attachable=True)

    def deploy(self, health_interval: float, timeout: float = 600) -> None:
        api = self.daemon.api
        health = docker.types.Healthcheck(
            test=["CMD-SHELL", HEALTH_CMD], interval=int(health_interval * 1e9),
            timeout=int(HEALTH_TIMEOUT * 1e9), retries=HEALTH_RETRIES,
            start_period=int(HEALTH_START * 1e9)) if health_interval > 0 else None
        spec = docker.types.ContainerSpec(self.ids[IMAGES["v1"]], command=HTTPD,
                                          healthcheck=health,
                                          stop_grace_period=int(GRACE * 1e9))
        template = docker.types.TaskTemplate(spec, networks=[NETWORK])
        api.create_service(template, name="web",
                           mode=docker.types.ServiceMode("replicated", self.replicas))
        deadline = time.monotonic() + timeout
        while self._count(self.ids[IMAGES["v1"]])[0] < self.replicas:
            if time.monotonic() > deadline:
                raise TimeoutError("Swarm: the service did not start")
            time.sleep(0.2)

    def _count(self, image: str) -> tuple[int, int]:
        """(new tasks desired running and running, other tasks running)."""
        tasks = self.daemon.api.tasks(filters={"service": "web"})
        new = old = 0
        for t in tasks:
            running = t["Status"]["State"] == "running"
            if t["Spec"]["ContainerSpec"]["Image"] == image:
                new += running and t["DesiredState"] == "running"
            else:
                old += running
        return new, old

    def update(self, image: str, parallelism: int, order: str, monitor: float,
               timeout: float) -> Run:
        api = self.daemon.api
        image_id = self.ids[image]
        info = api.inspect_service("web")
        spec = info["Spec"]
        spec["TaskTemplate"]["ContainerSpec"]["Image"] = image_id
        spec["TaskTemplate"]["ForceUpdate"] = spec["TaskTemplate"].get("ForceUpdate", 0)
        spec["UpdateConfig"] = {"Parallelism": parallelism, "Delay": 0,
                                "FailureAction": "pause", "Monitor": int(monitor * 1e9),
                                "MaxFailureRatio": 0, "Order": order}
        t0 = time.monotonic()
        # What `docker service update --no-resolve-image` sends: the spec as it is.
        api._post_json(api._url("/services/{0}/update", "web"), data=spec,
                       params={"version": info["Version"]["Index"]}).raise_for_status()
        all_new = completed = None
        while all_new is None or completed is None:
            now = time.monotonic() - t0
            if now > timeout:
                raise TimeoutError(f"Swarm: update not done after {timeout:.0f} s")
            if all_new is None:
                new, old = self._count(image_id)
                if new == self.replicas and not old:
                    all_new = now
            if completed is None:
                status = (api.inspect_service("web").get("UpdateStatus") or {})
                if status.get("State") == "completed":
                    completed = now
                elif status.get("State") == "paused":
                    raise RuntimeError(f"Swarm: update paused: {status.get('Message')}")
            time.sleep(0.05)
        return Run(all_new, completed)

    def remove(self) -> None:
        self.daemon.remove("web", timeout=300)

    def stop(self) -> None:
        self.daemon.stop()


# --- the run --------------------------------------------------------------------------------


def parse_settings(text: str) -> list[tuple[int, str]]:
    out = []
    for item in text.split(","):
        parallelism, _, order = item.partition("/")
        if order not in ("stop-first", "start-first") or not parallelism.isdigit():
            raise SystemExit(f'bad setting "{item}": write PARALLELISM/ORDER, e.g. '
                             "5/start-first")
        out.append((int(parallelism), order))
    return out


async def run(args: argparse.Namespace) -> int:
    tag = secrets.token_hex(3)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-update-"))
    url = await asyncio.to_thread(ensure_dockerd)
    api = docker.APIClient(base_url=url, version=API_VERSION, timeout=120)
    for variant, image in IMAGES.items():
        await asyncio.to_thread(ensure_variant_image, api, image, variant)
    say(f"shoal rolling-update benchmark: {args.replicas} replicas, settings "
        f"{args.settings}, monitor {args.monitor} s; {os.cpu_count()} CPUs, load average "
        f"{load_average()}; logs in {tmp}")
    shoal = Shoal(tmp, f"u{tag}", args.replicas)
    swarm = None if args.no_swarm else Swarm(tmp, tag, args.replicas)
    results: list[tuple[int, str, Run, Run | None]] = []
    try:
        await shoal.start()
        await shoal.deploy(shoal.base())
        say("shoal: 1 namespace node up, the VIP client running")
        if swarm is not None:
            await asyncio.to_thread(swarm.start)
            say(f"swarm: private dockerd in netns {swarm.netns}")
        for i, (parallelism, order) in enumerate(args.settings):
            image = IMAGES["v2"]

            async def shoal_run(image: str = image, parallelism: int = parallelism,
                                order: str = order) -> Run:
                # A fresh service each time: every run starts from N tasks of v1, and
                # only one side's health checks load the machine at a time.
                await shoal.deploy(shoal.web(args.health_interval))
                vip = await shoal.vip()
                load = None
                if order == "start-first":
                    pid = await shoal.client_pid(api)
                    load = await asyncio.to_thread(Load, pid, vip)
                try:
                    r = await shoal.update(image, parallelism, order, args.monitor,
                                           args.timeout)
                finally:
                    result = await asyncio.to_thread(load.finish) if load else None
                    await shoal.remove_web(api)
                if result is not None:
                    r.requests = result["ok"] + result["failed"]
                    r.failed = result["failed"]
                    r.failures = result["failures"]
                return r

            def swarm_run(image: str = image, parallelism: int = parallelism,
                          order: str = order) -> Run | None:
                if swarm is None:
                    return None
                swarm.deploy(args.health_interval)
                try:
                    return swarm.update(image, parallelism, order, args.monitor,
                                        args.timeout)
                finally:
                    swarm.remove()

            if i % 2 == 0:
                s = await shoal_run()
                w = await asyncio.to_thread(swarm_run)
            else:
                w = await asyncio.to_thread(swarm_run)
                s = await shoal_run()
            results.append((parallelism, order, s, w))
            line = (f"parallelism {parallelism} {order}: Shoal all new running "
                    f"{s.all_new:.2f} s, completed {s.completed:.2f} s")
            if w is not None:
                line += f"; Swarm {w.all_new:.2f} s, completed {w.completed:.2f} s"
            if s.requests is not None:
                line += f"; VIP requests {s.failed} failed of {s.requests}"
                if s.failures:
                    line += f" {s.failures[:5]}"
            say(line)
        return report(args, results)
    finally:
        await shoal.stop()
        if swarm is not None:
            await asyncio.to_thread(swarm.stop)
        api.close()


def report(args: argparse.Namespace,
           results: list[tuple[int, str, Run, Run | None]]) -> int:
    ok = True
    say("")
    say(f"== results: {args.replicas} replicas, image change, delay 0, monitor "
        f"{args.monitor} s; seconds from the write ==")
    say(f"{'setting':<24} {'Shoal all new':>14} {'Swarm all new':>14} {'ratio':>6} "
        f"{'Shoal compl.':>13} {'Swarm compl.':>13} {'VIP failed/total':>17}")
    for parallelism, order, s, w in results:
        ratio = s.all_new / w.all_new if w is not None else float("nan")
        good = w is None or s.all_new <= w.all_new
        requests = (f"{s.failed}/{s.requests}" if s.requests is not None else "-")
        good &= not s.failed
        ok &= good
        say(f"{f'{parallelism}/{order}':<24} {s.all_new:14.2f} "
            f"{(w.all_new if w else float('nan')):14.2f} {ratio:6.2f} {s.completed:13.2f} "
            f"{(w.completed if w else float('nan')):13.2f} {requests:>17}  "
            f"{'PASS' if good else 'FAIL'}")
    say("target: Shoal's all-new time <= Swarm's at every setting, 0 failed requests")
    say(f"load average at the end: {load_average()}")
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=50)
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="comma-separated PARALLELISM/ORDER (default: 1, 5 and 0, "
                        "stop-first then start-first)")
    p.add_argument("--monitor", type=float, default=1.0,
                   help="updateConfig monitor, seconds, on both sides (default 1)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds one update may take (default 900)")
    p.add_argument("--health-interval", type=float, default=2.0,
                   help="health-check interval, seconds, on both sides; 0: no health "
                        "check (default 2: 50 containers checked every 0.5 s load 2 cores "
                        "to a load average near 100)")
    p.add_argument("--no-swarm", action="store_true", help="skip the Swarm baseline")
    args = p.parse_args()
    args.settings = parse_settings(args.settings)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if os.geteuid() != 0:
        sys.exit("bench/update.py needs root (namespaces, dockerd, a private dockerd)")
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run(args)))
    sys.exit(130)


if __name__ == "__main__":
    main()
