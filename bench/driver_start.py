"""Executor driver benchmark: N containers started through DockerExecutor, concurrently,
beside the docker SDK starting the same containers directly, in the same run.

    python bench/driver_start.py [-n 50] [--rounds 3] [--workers 32]

Baselines, all ``sleep 1000`` in ``shoal/busybox``:

- ``raw loop, none``: ``containers.run(network_mode="none")`` one after another (what a
  simple script does; dockerd builds a libnetwork sandbox per container);
- ``raw loop, none+disabled``: the same with ``network_disabled=True``, as the driver
  creates its containers;
- ``raw N threads``: that, from N threads at once (the raw start rate of this machine);
- ``driver``: ``prepare`` + ``start`` of N tasks with ``asyncio.gather``, and the
  teardown (``stop`` with 0.5 s grace, then ``remove``) of all of them at once.

Starts dockerd if needed. Raw containers are removed one at a time between rounds:
tearing down many sandboxed containers at once can deadlock dockerd 20.10.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import structlog

from shoal.agent.docker.dockerd import ensure_dockerd
from shoal.agent.docker.driver import API_VERSION, DockerExecutor
from shoal.agent.docker.image import TEST_IMAGE, ensure_test_image
from shoal.agent.exec.executor import LABEL_NODE, TaskSpec


def remove_all(client: Any, node: str) -> None:
    for c in client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={node}"}):
        client.api.remove_container(c["Id"], force=True, v=True)


def run_one(client: Any, node: str, disabled: bool) -> None:
    client.containers.run(TEST_IMAGE, ["sleep", "1000"], detach=True, network_mode="none",
                          network_disabled=disabled, labels={LABEL_NODE: node})


def raw_loop(client: Any, n: int, node: str, disabled: bool) -> float:
    t0 = time.monotonic()
    for _ in range(n):
        run_one(client, node, disabled)
    return time.monotonic() - t0


def raw_threads(client: Any, n: int, node: str, workers: int) -> float:
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: run_one(client, node, True), range(n)))
    return time.monotonic() - t0


async def driver_run(n: int, node: str, workers: int) -> tuple[float, float]:
    ex = DockerExecutor(node, max_workers=workers)
    tasks = []
    for i in range(n):
        uid = uuid.uuid4().hex
        tasks.append(TaskSpec(uid, f"bench.{i + 1}.{uid[:12]}", "default", "bench", node,
                              i + 1, {"image": TEST_IMAGE, "command": ["sleep", "1000"]}))

    async def start(task: TaskSpec) -> None:
        await ex.prepare(task)
        observed = await ex.start(task)
        assert observed.state == "running", observed

    t0 = time.monotonic()
    await asyncio.gather(*(start(t) for t in tasks))
    started = time.monotonic() - t0
    t0 = time.monotonic()
    await asyncio.gather(*(ex.stop(t.uid, 0.5) for t in tasks))
    await asyncio.gather(*(ex.remove(t.uid) for t in tasks))
    teardown = time.monotonic() - t0
    await ex.close()
    return started, teardown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    url = ensure_dockerd()
    client = docker.DockerClient(base_url=url, version=API_VERSION, max_pool_size=64)
    ensure_test_image(client)
    node = f"bench-{uuid.uuid4().hex[:6]}"
    results: dict[str, list[float]] = {
        "raw loop, none": [], "raw loop, none+disabled": [],
        f"raw {args.workers} threads, none+disabled": [], "driver start": [],
        "driver stop+remove": []}
    try:
        for _ in range(args.rounds):
            results["raw loop, none"].append(raw_loop(client, args.n, node, False))
            remove_all(client, node)
            results["raw loop, none+disabled"].append(raw_loop(client, args.n, node, True))
            remove_all(client, node)
            results[f"raw {args.workers} threads, none+disabled"].append(
                raw_threads(client, args.n, node, args.workers))
            remove_all(client, node)
            started, teardown = asyncio.run(driver_run(args.n, node, args.workers))
            results["driver start"].append(started)
            results["driver stop+remove"].append(teardown)
    finally:
        remove_all(client, node)
        client.close()
    print(f"{args.n} containers, {args.rounds} rounds")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:>32}: " + " ".join(f"{v:5.2f}s" for v in values)
              + f"   median {median:5.2f}s = {args.n / median:5.1f} containers/s")


if __name__ == "__main__":
    main()
