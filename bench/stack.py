"""Stack deploy benchmark: one compose file of 30 services deployed to convergence on
Shoal and on Docker Swarm mode, in the same run (issue 14; target Shoal <= 0.5 x Swarm).

    python bench/stack.py [--services 30] [--rounds 3] [--swarm-pull] [--no-swarm]

Root. The file is ``bench.stackfile``'s (30 services of ``shoal/busybox``, 50 tasks, two
overlay networks, an anchor with a merge key), written once and given unchanged to both:

* **Shoal**: ``swctl stack deploy -c FILE -d NAME`` on the one-node cluster ``swctl up
  --nodes 1 --runtime docker`` makes (``bench.shoalup``);
* **Swarm**: ``docker stack deploy -c FILE --resolve-image never NAME`` (detached, as the
  CLI is by default) against a private dockerd in a network namespace of its own in
  Swarm mode (``bench.swarmd``). Its tasks use the local image without asking the
  registry (``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``): the registry is unreachable here,
  and Swarm's own cost is the strictest baseline; ``--swarm-pull`` lets them try the
  registry first, as a plain daemon does.

Both clocks start just before the deploy command is started (its process start included)
and stop, measured the same way on both sides and polled every 50 ms:

* **tasks running**: every task of the stack desired running and in state ``running`` as
  the orchestrator reports it (Shoal: the Tasks in etcd; Swarm: its tasks API);
* **containers running**: as many containers labelled
  ``com.docker.stack.namespace=NAME`` running as the stack has tasks, as the dockerd that
  runs them reports it (Shoal: the host's shared dockerd; Swarm: its private one), so
  neither side is flattered by what its orchestrator calls running.

Each round deploys a stack of a fresh name on each side (alternating which goes first),
then removes it (``stack rm``) and waits until its tasks and containers (and, on Swarm,
networks) are gone. The ratio is taken within each round and the median judged. The
figures go in bench/RESULTS.md with the load average, printed at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import docker
import structlog

from bench.common import load_average, say
from bench.shoalup import ShoalUp
from bench.stackfile import render, task_count
from bench.swarmd import SwarmDaemon
from shoal.agent.docker.dockerd import ensure_dockerd
from shoal.agent.docker.driver import API_VERSION
from shoal.agent.docker.image import ensure_test_image_at
from shoal.compose.convert import NS_LABEL
from shoal.crds import taskstates as ts

TARGET = 0.5
POLL = 0.05


@dataclasses.dataclass
class Run:
    """Seconds from the deploy command's start."""

    command: float  # the command exited
    tasks: float  # all tasks running, per the orchestrator
    containers: float  # all containers running, per dockerd


async def measure(argv: list[str], env: dict[str, str], done_tasks: Callable[[], Awaitable[bool]],
                  done_containers: Callable[[], Awaitable[bool]], timeout: float,
                  what: str) -> Run:
    """Start ``argv``; poll both conditions every ``POLL`` s until both hold and the
    command has exited; the three times, from just before the command started."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    output = asyncio.create_task(proc.communicate())
    exited = tasks = containers = None
    try:
        while exited is None or tasks is None or containers is None:
            if exited is None and output.done():
                exited = time.monotonic() - t0
                out = (output.result()[0] or b"").decode(errors="replace")
                if proc.returncode != 0:
                    raise RuntimeError(f"{what}: {' '.join(argv)} exited {proc.returncode}:"
                                       f"\n{out[-3000:]}")
            if tasks is None and await done_tasks():
                tasks = time.monotonic() - t0
            if containers is None and await done_containers():
                containers = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what}: not converged after {timeout:.0f} s (command "
                                   f"exited: {exited}, tasks: {tasks}, containers: "
                                   f"{containers})")
            await asyncio.sleep(POLL)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(Exception):
            await output
    return Run(exited, tasks, containers)


async def gone(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} still there after {timeout:.0f} s")
        await asyncio.sleep(0.2)


def running_containers(api: Any, stack: str) -> int:
    return len(api.containers(filters={"label": f"{NS_LABEL}={stack}",
                                       "status": "running"}))


# --- Shoal --------------------------------------------------------------------------------


class Shoal(ShoalUp):
    """The one-node cluster and ``swctl stack deploy`` on it."""

    def __init__(self, tmp: pathlib.Path, tag: str, file: pathlib.Path) -> None:
        super().__init__(tmp, tag, "stack")
        self.file = file

    async def deploy(self, stack: str, api: Any, total: int, timeout: float) -> Run:
        argv = self.swctl_argv("stack", "deploy", "-c", str(self.file), "-d", stack)

        async def tasks() -> bool:
            found = await self.tasks(stack)
            return sum(1 for t in found
                       if ts.is_active_desired(t) and ts.is_running(t)) >= total

        async def containers() -> bool:
            return await asyncio.to_thread(running_containers, api, stack) >= total

        return await measure(argv, self.env, tasks, containers, timeout, "Shoal")

    async def remove(self, stack: str, api: Any, timeout: float = 300) -> None:
        await asyncio.to_thread(self.swctl, "stack", "rm", stack)

        async def clean() -> bool:
            left = await asyncio.to_thread(api.containers, all=True,
                                           filters={"label": f"{NS_LABEL}={stack}"})
            return not left and not await self.tasks(stack)

        await gone(clean, timeout, f"Shoal: stack {stack}'s tasks or containers")


# --- Swarm --------------------------------------------------------------------------------


class Swarm:
    """Swarm mode on a private dockerd in a network namespace of its own."""

    def __init__(self, tmp: pathlib.Path, tag: str, file: pathlib.Path, pull: bool) -> None:
        self.daemon = SwarmDaemon(tmp / "swarm-dockerd.log", name="shoal-bench-stack-swarm",
                                  netns=f"shoal-bench-stk-{tag}",
                                  prefer_local_images=not pull)
        self.file = file

    def start(self) -> None:
        self.daemon.start()

    async def deploy(self, stack: str, total: int, timeout: float) -> Run:
        api = self.daemon.api
        argv = ["docker", "stack", "deploy", "--detach=true", "--resolve-image", "never",
                "-c", str(self.file), stack]

        def tasks() -> bool:
            services = {s["ID"] for s in api.services(filters={"label": f"{NS_LABEL}={stack}"})}
            found = api.tasks(filters={"desired-state": "running"})
            return sum(1 for t in found if t["ServiceID"] in services
                       and t["Status"]["State"] == "running") >= total

        def containers() -> bool:
            return running_containers(api, stack) >= total

        return await measure(argv, self.daemon.cli_env(),
                             lambda: asyncio.to_thread(tasks),
                             lambda: asyncio.to_thread(containers), timeout, "Swarm")

    async def remove(self, stack: str, timeout: float = 300) -> None:
        api = self.daemon.api
        proc = await asyncio.to_thread(
            subprocess.run, ["docker", "stack", "rm", stack], capture_output=True, text=True,
            env=self.daemon.cli_env(), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"docker stack rm {stack}: {proc.stdout}{proc.stderr}")

        def clean() -> bool:
            label = {"label": f"{NS_LABEL}={stack}"}
            return not api.containers(all=True, filters=label) and not api.networks(
                filters=label)

        await gone(lambda: asyncio.to_thread(clean), timeout,
                   f"Swarm: stack {stack}'s containers or networks")

    def stop(self) -> None:
        self.daemon.stop()


# --- the run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    tag = secrets.token_hex(3)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-stack-"))
    file = tmp / "stack.yml"
    file.write_text(render(args.services))
    total = task_count(args.services)
    url = await asyncio.to_thread(ensure_dockerd)
    await asyncio.to_thread(ensure_test_image_at, url)
    api = docker.APIClient(base_url=url, version=API_VERSION, timeout=120)
    shoal = Shoal(tmp, f"k{tag}", file)
    swarm = None if args.no_swarm else Swarm(tmp, tag, file, args.swarm_pull)
    say(f"shoal stack benchmark: {args.services} services, {total} tasks, {args.rounds} "
        f"round(s); {os.cpu_count()} CPUs, load average {load_average()}; file and logs "
        f"in {tmp}")
    results: list[tuple[Run, Run | None]] = []
    try:
        await shoal.start()
        say("shoal: 1 namespace node up")
        if swarm is not None:
            await asyncio.to_thread(swarm.start)
            say(f"swarm: private dockerd in netns {swarm.daemon.netns}, local images "
                f"{'after a registry try' if args.swarm_pull else 'only'}")
        for r in range(args.rounds):
            stack = f"b{tag}r{r + 1}"

            async def shoal_run(stack: str = stack) -> Run:
                try:
                    return await shoal.deploy(stack, api, total, args.timeout)
                finally:
                    await shoal.remove(stack, api)

            async def swarm_run(stack: str = stack) -> Run | None:
                if swarm is None:
                    return None
                try:
                    return await swarm.deploy(stack, total, args.timeout)
                finally:
                    await swarm.remove(stack)

            if r % 2 == 0:
                s, w = await shoal_run(), await swarm_run()
            else:
                w = await swarm_run()
                s = await shoal_run()
            results.append((s, w))
            line = (f"round {r + 1}: Shoal command {s.command:.2f} s, tasks running "
                    f"{s.tasks:.2f} s, containers running {s.containers:.2f} s")
            if w is not None:
                line += (f"; Swarm command {w.command:.2f} s, tasks running {w.tasks:.2f} s, "
                         f"containers running {w.containers:.2f} s")
            say(line)
        return report(args, total, results)
    finally:
        await shoal.stop()
        if swarm is not None:
            await asyncio.to_thread(swarm.stop)
        api.close()


def report(args: argparse.Namespace, total: int, results: list[tuple[Run, Run | None]]
           ) -> int:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    ok = True
    say("")
    say(f"== results: {args.services} services, {total} tasks, {len(results)} round(s); "
        "seconds from the deploy command's start, medians [per round] ==")
    say("Shoal: swctl stack deploy -d; Swarm: docker stack deploy")
    for field, label in (("command", "command exited"), ("tasks", "all tasks running"),
                         ("containers", "all containers running")):
        shoal = [getattr(s, field) for s, _ in results]
        line = f"  {label:<24} Shoal {med(shoal):6.2f} s {_series(shoal)}"
        swarm = [getattr(w, field) for _, w in results if w is not None]
        if swarm:
            ratios = [getattr(s, field) / getattr(w, field) for s, w in results
                      if w is not None]
            line += (f"   Swarm {med(swarm):6.2f} s {_series(swarm)}   Shoal/Swarm "
                     f"{med(ratios):.2f} {_series(ratios)}")
            if field != "command":
                good = med(ratios) <= TARGET
                ok &= good
                line += f"  {'PASS' if good else 'FAIL'}"
        say(line)
    say(f"target: Shoal <= {TARGET} x Swarm to all tasks running and to all containers "
        "running (median of the per-round ratios)")
    say(f"load average at the end: {load_average()}")
    return 0 if ok else 1


def _series(values: list[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--swarm-pull", action="store_true",
                   help="let Swarm's tasks try the registry before using the local image")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one deploy may take to converge (default 600)")
    p.add_argument("--no-swarm", action="store_true", help="skip the Swarm baseline")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if os.geteuid() != 0:
        sys.exit("bench/stack.py needs root (namespaces, dockerd, a private dockerd)")
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run(args)))
    sys.exit(130)


if __name__ == "__main__":
    main()
