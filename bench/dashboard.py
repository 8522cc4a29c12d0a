"""Dashboard scale benchmark: from a task's state change in etcd to the browser's DOM.

Against a fresh etcd holding N nodes and M tasks (spread over services and nodes, as a
scheduler leaves them), runs the real ``swctl dashboard`` as its own process and a real
headless chromium on its page (Selenium), then measures:

* load: page opened -> the snapshot drawn (the header counting every running task);
* latency: for K tasks whose boxes are on screen, one at a time at random 20-100 ms
  intervals, the time from just before the task's status write to etcd until the page's
  box carries the new state (a MutationObserver in the page stamps the attribute change
  with the wall clock; same machine, same clock) — p50, p99, max;
* idle: the dashboard process's CPU while nothing changes, with the browser connected;
* memory: the dashboard process's resident size, against a process that only lists and
  watches the same five kinds with the same informers (the baseline the issue names).

    python bench/dashboard.py [--nodes 1000] [--tasks 100000] [--samples 200]

The objects are written straight to etcd (no controllers or agents run: what is measured
is the dashboard's path, etcd -> informer -> hub -> server-sent events -> page -> DOM,
with the machine's two cores left to it, etcd and the browser). Targets (issue 17):
latency p99 <= 500 ms; idle CPU ~0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

from bench import common
from bench.common import load_average, say
from shoal.crds import kinds, resource
from shoal.store import client, etcd_server

REG = kinds.Registry.builtin()
TASKS, NODES, SERVICES = REG.lookup("tasks"), REG.lookup("nodes"), REG.lookup("services")
NAMESPACE = "bench"
PER_SERVICE = 1000
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TICK = 1 / os.sysconf("SC_CLK_TCK")

MARKER = """
window.__marks = [];
new MutationObserver((changes) => {
  const t = Date.now();
  for (const m of changes) {
    const el = m.target;
    if (el.dataset && el.dataset.task) window.__marks.push([el.dataset.task, el.dataset.state, t]);
  }
}).observe(document.getElementById('nodes'),
           {attributes: true, attributeFilter: ['data-state'], subtree: true});
"""


def _node(i: int) -> resource.Resource:
    obj = resource.new("Node", f"node-{i:04d}", None,
                       spec={"availability": "active", "role": "worker"},
                       labels={"zone": f"z{i % 3}"})
    obj.status = {"state": "ready", "address": f"10.{i // 250}.{i % 250}.2",
                  "hostname": f"node-{i:04d}", "dataplane": "nftables"}
    return obj


def _service(s: int, replicas: int) -> resource.Resource:
    return resource.new("Service", f"svc-{s:03d}", NAMESPACE,
                        spec={"replicas": replicas,
                              "template": {"image": "shoal/busybox"}})


def _task(i: int, nodes: int) -> resource.Resource:
    service = f"svc-{i // PER_SERVICE:03d}"
    slot = i % PER_SERVICE + 1
    obj = resource.new("Task", f"{service}.{slot}.1", NAMESPACE,
                       spec={"serviceName": service, "slot": slot,
                             "nodeName": f"node-{i % nodes:04d}", "desiredState": "running",
                             "serviceGeneration": 1,
                             "template": {"image": "shoal/busybox"}},
                       labels={"shoal.io/service": service})
    obj.status = {"state": "running", "timestamp": resource.now_rfc3339()}
    return obj


async def populate(store: client.Store, nodes: int, tasks: int) -> None:
    services = (tasks + PER_SERVICE - 1) // PER_SERVICE
    objs: list[tuple[kinds.KindInfo, resource.Resource]] = [
        *((NODES, _node(i)) for i in range(nodes)),
        *((SERVICES, _service(s, min(PER_SERVICE, tasks - s * PER_SERVICE)))
          for s in range(services)),
        *((TASKS, _task(i, nodes)) for i in range(tasks))]
    await common.commit_all(store, [client.Op("create", info, obj) for info, obj in objs])


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


INFORMERS_ONLY = """
import asyncio, pathlib, sys
from shoal.cli import common
from shoal.cli.dashboard import views
from shoal.runtime import informer
from shoal.store import client

async def main():
    store = await client.Store.connect(sys.argv[1], prefix=sys.argv[2])
    registry = await common.registry_of(store)
    factory = informer.SharedInformerFactory(store)
    for kind in views.KINDS:
        factory.informer(registry.lookup(kind))
    factory.start()
    await factory.wait_for_sync(600)
    await asyncio.sleep(2)
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            print(int(line.split()[1]) / 1024)
    await factory.stop()
    await store.close()

asyncio.run(main())
"""


def browser(profile: pathlib.Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1600,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=ChromeService(CHROMEDRIVER))


def wait_for(driver: webdriver.Chrome, script: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout}s: {script}")


def settled_boxes(driver: webdriver.Chrome) -> int:
    """Task boxes in the DOM once the columns in view have drawn (the count holds still
    for half a second)."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 0.5:
        count = int(driver.execute_script("return document.querySelectorAll('.task')"
                                          ".length"))
        if count != last:
            last, since = count, time.monotonic()
        time.sleep(0.05)
    return last


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-dashboard-"))
    server = etcd_server.EtcdServer(tmp / "etcd" / "data")
    server.start()
    prefix = "/bench"
    store = await client.Store.connect(server.url, prefix)
    env = dict(os.environ, SHOAL_ETCD=server.url, SHOAL_PREFIX=prefix)
    dash: asyncio.subprocess.Process | None = None
    driver: webdriver.Chrome | None = None
    say(f"{args.nodes} nodes, {args.tasks} tasks; {os.cpu_count()} CPUs; load average "
        f"{load_average()}")
    try:
        t0 = time.monotonic()
        await populate(store, args.nodes, args.tasks)
        say(f"written in {time.monotonic() - t0:.1f} s")

        baseline = await asyncio.create_subprocess_exec(
            sys.executable, "-c", INFORMERS_ONLY, server.url, prefix, env=env,
            stdout=asyncio.subprocess.PIPE)
        informers_mb = float((await baseline.communicate())[0].decode().strip())

        t0 = time.monotonic()
        dash = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal.cli", "dashboard", "--port", "0", env=env,
            stdout=asyncio.subprocess.PIPE)
        assert dash.stdout is not None
        url = (await dash.stdout.readline()).decode().split(" ", 1)[1].strip()
        say(f"dashboard: serving {time.monotonic() - t0:.1f} s after start (informers "
            f"synced), {url}")

        driver = browser(tmp / "chromium")
        t0 = time.monotonic()
        driver.get(url)
        wait_for(driver, "return document.getElementById('summary').textContent"
                 f".includes('{args.tasks} tasks running')", 600)
        loaded = time.monotonic() - t0
        boxes = settled_boxes(driver)
        say(f"load: page opened -> {args.tasks} tasks in the page in {loaded:.2f} s; "
            f"{boxes} boxes in the DOM")
        driver.execute_script(MARKER)
        keys: list[str] = driver.execute_script(
            "return [...document.querySelectorAll('#nodes .node .task')]"
            ".map(e => e.dataset.task)")
        picked = random.sample(keys, min(args.samples, len(keys)))

        written: dict[str, float] = {}
        for key in picked:
            ns, name = key.split("/", 1)
            task = await store.get(TASKS, name, ns)
            task.status = {**task.status, "state": "starting"}
            written[key] = time.time()
            await store.update(TASKS, task)
            await asyncio.sleep(random.uniform(0.02, 0.1))
        await asyncio.sleep(2.0)
        marks: list[list[Any]] = driver.execute_script("return window.__marks")
        seen: dict[str, float] = {}
        for key, state, stamp in marks:
            if state == "starting" and key in written and key not in seen:
                seen[key] = stamp / 1000 - written[key]
        lat = [v * 1000 for v in seen.values()]
        missing = len(written) - len(seen)
        say(f"latency (etcd write -> DOM), {len(lat)} changes ({missing} not seen): "
            f"p50 {statistics.median(lat):.0f} ms, p99 {pct(lat, 0.99):.0f} ms, "
            f"max {max(lat):.0f} ms (target p99 <= 500 ms)")

        # A burst, as a drain or a scale of a big service makes: --burst tasks changed in
        # 127-object transactions, 16 in flight, those on screen among them.
        on_screen = [k for k in keys if k not in written]
        others = [f"{NAMESPACE}/{_task(i, args.nodes).name}" for i in range(args.tasks)]
        burst = list(dict.fromkeys([*on_screen, *random.sample(others, args.burst)]))
        burst = burst[:args.burst]
        driver.execute_script("window.__marks = []")
        objs = []
        for key in burst:
            ns, name = key.split("/", 1)
            objs.append(await store.get(TASKS, name, ns))
        for obj in objs:
            obj.status = {**obj.status, "state": "preparing"}
        ops = [client.Op("update", TASKS, o) for o in objs]
        started = time.time()
        await common.commit_all(store, ops)
        committed = time.time() - started
        watched = set(burst) & set(on_screen)
        await asyncio.sleep(3.0)
        marks = driver.execute_script("return window.__marks")
        shown = {key: stamp / 1000 - started for key, state, stamp in marks
                 if state == "preparing" and key in watched}
        if shown:
            say(f"burst: {len(burst)} tasks changed (written in {committed * 1000:.0f} ms); "
                f"the {len(watched)} on screen all shown {max(shown.values()) * 1000:.0f} ms "
                f"after the first write ({len(watched) - len(shown)} not seen)")

        await asyncio.sleep(2.0)
        c0, w0 = cpu_seconds(dash.pid), time.monotonic()
        await asyncio.sleep(args.idle)
        idle = (cpu_seconds(dash.pid) - c0) / (time.monotonic() - w0)
        say(f"idle: dashboard {idle:.2%} of a CPU over {args.idle:.0f} s with a browser "
            "connected (target ~0)")
        say(f"memory: dashboard {rss_mb(dash.pid):.0f} MB resident; the same informers "
            f"alone {informers_mb:.0f} MB")
    finally:
        if driver is not None:
            driver.quit()
        if dash is not None:
            dash.terminate()
            await asyncio.wait_for(dash.wait(), 10)
        await store.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--burst", type=int, default=5000,
                        help="tasks changed at once for the burst figure")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
