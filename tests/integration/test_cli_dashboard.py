"""``swctl dashboard`` in a real browser (Debian's chromium, headless, through Selenium and
chromium-driver) against a 3-node hollow cluster: what the page shows, that it follows
swctl's writes live, and that its buttons act as swctl does — errors word for word.

Screenshots go to the test's tmp dir; with ``SHOAL_DASHBOARD_SCREENSHOT=1`` the first one
is also copied to docs/images/dashboard.png, the README's picture.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from shoal.crds import kinds
from shoal.store import client, etcd_server
from tests.helpers import eventually_sync as eventually
from tests.integration.cli_support import Cluster, Streaming, Swctl, hollow_cluster

NODES = ["n-0", "n-1", "n-2"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
README_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"

WEB = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {{name: web, labels: {{app: web}}}}
spec:
  replicas: {replicas}
  template: {{image: shoal/busybox, command: [httpd, -f, -p, "8080"]}}
  endpoint: {{ports: [{{published: 8080, target: 8080}}]}}
"""


@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    swctl = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("dash"))
    with hollow_cluster(swctl) as c:
        swctl.write("web.yaml", WEB.format(replicas=3))
        swctl("apply", "-f", "web.yaml", "--verify-window", "0.3", timeout=60)
        yield c


def start_dashboard(swctl: Swctl, *flags: str, port: int = 0) -> tuple[Streaming, str]:
    proc = swctl.start("dashboard", "--port", str(port), *flags)
    line = proc.read_line(timeout=30)
    assert line.startswith("Dashboard: http://"), line
    return proc, line.split(" ", 1)[1]


@pytest.fixture(scope="module")
def dashboard(cluster: Cluster) -> Iterator[str]:
    proc, url = start_dashboard(cluster.swctl)
    try:
        yield url
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "the browser tests need Debian's chromium and chromium-driver: run "
        "scripts/install.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Headless as root, and no calls home: this network refuses them, which would stall.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, dashboard: str) -> WebDriver:
    browser.get(dashboard)
    eventually(lambda: browser.find_element(By.ID, "conn").text == "live", 20,
               "the page's event stream live")
    return browser


def screenshot(browser: WebDriver, tmp_path: Path, name: str, readme: bool = False) -> None:
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path)), "screenshot failed"
    if readme and os.environ.get("SHOAL_DASHBOARD_SCREENSHOT"):
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGE)


def tasks(swctl: Swctl) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(swctl("get", "tasks", "-o", "json").stdout)[
        "items"]
    return items


def placed_in_page(browser: WebDriver) -> dict[str, str]:
    """Task name -> the node column its box sits in, as the page shows them."""
    found: dict[str, str] = browser.execute_script("""
        const out = {};
        for (const box of document.querySelectorAll('.node .task[data-task]')) {
          out[box.dataset.task.split('/').pop()] = box.closest('.node').dataset.node;
        }
        return out;""")
    return found


def placed_in_cluster(swctl: Swctl, service: str) -> dict[str, str]:
    """Task name -> node of the tasks wanted running and not ended (the node columns)."""
    return {t["metadata"]["name"]: t["spec"]["nodeName"] for t in tasks(swctl)
            if t["spec"].get("serviceName") == service and t["spec"].get("nodeName")
            and t["spec"].get("desiredState", "running") == "running"
            and t.get("status", {}).get("state") not in ("complete", "failed", "shutdown",
                                                         "rejected", "orphaned")}


def replicas_cell(browser: WebDriver, service: str = "default/web") -> str:
    text: str = browser.execute_script(
        "const c = document.querySelector(`#services tr[data-service='${arguments[0]}'] "
        "td.replicas`); return c ? c.textContent : '';", service)
    return text


def test_the_page_shows_the_nodes_and_where_each_task_runs(page: WebDriver, cluster: Cluster,
                                                           tmp_path: Path) -> None:
    names = [col.get_attribute("data-node")
             for col in page.find_elements(By.CSS_SELECTOR, "#nodes .node")]
    assert names == NODES
    heads = {n: page.find_element(By.CSS_SELECTOR, f".node[data-node='{n}'] .node-head").text
             for n in NODES}
    assert all("ready" in h and "active" in h for h in heads.values()), heads
    want = placed_in_cluster(cluster.swctl, "web")
    assert len(want) == 3
    eventually(lambda: placed_in_page(page) == want, 5, "the page's columns = the tasks' nodes")
    eventually(lambda: replicas_cell(page) == "3/3", 5, "REPLICAS 3/3 in the services table")
    row = page.find_element(By.CSS_SELECTOR, "#services tr[data-service='default/web']").text
    assert "*:8080->8080/tcp" in row and "replicated" in row and "shoal/busybox" in row
    # The service's tasks, as `service ps` lists them: one row per slot, on its node.
    click(page, "#services tr[data-service='default/web'] td.name")
    rows = eventually(lambda: [r.text for r in page.find_elements(
        By.CSS_SELECTOR, "#detail tbody tr.current")], 5, "the service's task rows")
    by_label = {t["metadata"]["name"].rsplit(".", 1)[0]: t["spec"]["nodeName"]
                for t in tasks(cluster.swctl) if t["metadata"]["name"] in want}
    assert [r.split()[:2] for r in rows] == [[label, node] for label, node
                                            in sorted(by_label.items())]
    screenshot(page, tmp_path, "three-nodes", readme=True)


def test_swctl_scale_changes_the_page_within_a_second_without_reload(
        page: WebDriver, cluster: Cluster, tmp_path: Path) -> None:
    page_id = page.execute_script("return window.__shoalPageId")
    try:
        cluster.swctl("scale", "web=5", "--detach")
        written = time.monotonic()
        eventually(lambda: replicas_cell(page).endswith("/5"), 1.0,
                   "the page showing 5 desired replicas within 1 s of the write")
        shown_after = time.monotonic() - written
        eventually(lambda: replicas_cell(page) == "5/5", 10, "5/5 running in the page")
        eventually(lambda: placed_in_page(page) == placed_in_cluster(cluster.swctl, "web")
                   and len(placed_in_page(page)) == 5, 10, "5 task boxes in their columns")
        assert page.execute_script("return window.__shoalPageId") == page_id, "page reloaded"
        assert shown_after < 1.0
        screenshot(page, tmp_path, "scaled-to-5")
    finally:
        cluster.swctl("scale", "web=3", "--verify-window", "0.3", timeout=60)


def click(page: WebDriver, selector: str) -> None:
    page.find_element(By.CSS_SELECTOR, selector).click()


def result_box(page: WebDriver) -> tuple[str, str]:
    box = page.find_element(By.ID, "action-result")
    return str(box.get_attribute("data-ok")), box.text


def test_draining_a_node_in_the_page_moves_its_tasks(page: WebDriver, cluster: Cluster,
                                                     tmp_path: Path) -> None:
    swctl = cluster.swctl
    victim = "n-0"
    if victim not in placed_in_cluster(swctl, "web").values():
        pytest.fail(f"no web task on {victim} to move: {placed_in_cluster(swctl, 'web')}")
    try:
        click(page, f".node[data-node='{victim}'] button[data-action='drain']")
        eventually(lambda: result_box(page)[0] == "true", 10, "the drain action's result")
        assert result_box(page)[1].splitlines() == [f"$ swctl node drain {victim}",
                                                    f"node/{victim} drained"]

        def moved() -> bool:
            where = placed_in_cluster(swctl, "web")
            return len(where) == 3 and victim not in where.values()
        eventually(moved, 20, f"web's tasks off {victim}")
        eventually(lambda: placed_in_page(page) == placed_in_cluster(swctl, "web"), 5,
                   "the page's columns following the move")
        column = page.find_element(By.CSS_SELECTOR, f".node[data-node='{victim}']")
        assert column.find_elements(By.CSS_SELECTOR, ".task") == []
        assert column.get_attribute("data-availability") == "drain"
        node = json.loads(swctl("get", "nodes", victim, "-o", "json").stdout)
        assert node["spec"]["availability"] == "drain"
        screenshot(page, tmp_path, "drained")
    finally:
        swctl("node", "activate", victim)


def test_a_bad_scale_in_the_page_shows_swctls_error_and_changes_nothing(
        page: WebDriver, cluster: Cluster, tmp_path: Path) -> None:
    swctl = cluster.swctl
    before = json.loads(swctl("get", "svc", "web", "-o", "json").stdout)
    field = page.find_element(By.CSS_SELECTOR, "#services tr[data-service='default/web'] "
                                               "input.scale")
    field.clear()
    field.send_keys("-1")
    click(page, "#services tr[data-service='default/web'] button[data-action='scale']")
    eventually(lambda: result_box(page)[0] == "false", 10, "the failed action's result")
    cli = swctl("scale", "web=-1", "-n", "default", "--detach", expect=1)
    shown = result_box(page)[1].splitlines()
    assert shown == ["$ swctl scale web=-1 -n default --detach", *cli.stderr.splitlines()]
    assert 'invalid replica count "-1"' in shown[1]
    after = json.loads(swctl("get", "svc", "web", "-o", "json").stdout)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    screenshot(page, tmp_path, "bad-scale")


def test_another_address_needs_the_printed_token(cluster: Cluster) -> None:
    proc, url = start_dashboard(cluster.swctl, "--address", "0.0.0.0")
    try:
        assert "?token=" in url
        bare = url.split("?", 1)[0]
        for path in ("", "events", "static/app.js"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bare + path, timeout=5)
            assert refused.value.code == 401
            assert "token" in refused.value.read().decode()
        with urllib.request.urlopen(url, timeout=5) as ok:
            assert ok.status == 200 and b"Shoal" in ok.read()
    finally:
        proc.kill()


def detail_rows(page: WebDriver) -> dict[str, str]:
    """Task uid -> slot label of the current rows of the service's task list (read in one
    script: the list is redrawn as tasks change, so held elements go stale)."""
    rows: dict[str, str] = page.execute_script("""
        const out = {};
        for (const r of document.querySelectorAll('#detail tbody tr.current')) {
          out[r.dataset.uid] = r.cells[0].textContent;
        }
        return out;""")
    return rows


def open_service(page: WebDriver) -> None:
    click(page, "#services tr[data-service='default/web'] td.name")
    eventually(lambda: len(page.find_elements(By.CSS_SELECTOR, "#detail tbody tr.current"))
               == 3, 5, "web's three slots listed")


def test_a_tasks_logs_stream_from_its_node(page: WebDriver, cluster: Cluster) -> None:
    open_service(page)
    row = page.find_element(By.CSS_SELECTOR, "#detail tbody tr.current")
    name = str(row.get_attribute("data-task")).split("/")[-1]
    node = row.text.split()[1]
    row.find_element(By.CSS_SELECTOR, "button[data-action='logs']").click()
    text = eventually(lambda: page.find_element(By.ID, "logs").text, 10, "log lines")
    # What the hollow driver writes for a task, as `swctl logs` shows it.
    assert f"hollow task {name} on node {node}" in text
    cli = cluster.swctl("logs", f"task/{name}")
    assert f"hollow task {name} on node {node}" in cli.stdout


def test_deleting_a_task_in_the_page_replaces_it(page: WebDriver, cluster: Cluster) -> None:
    open_service(page)
    row = page.find_element(By.CSS_SELECTOR, "#detail tbody tr.current")
    key = str(row.get_attribute("data-task"))
    uid = str(row.get_attribute("data-uid"))
    label = row.text.split()[0]
    row.find_element(By.CSS_SELECTOR, "button[data-action='delete-task']").click()
    eventually(lambda: result_box(page)[0] == "true", 10, "the delete's result")
    assert result_box(page)[1].splitlines()[1] == f"task/{key.split('/')[-1]} deleted"

    def replaced() -> bool:
        current = detail_rows(page)
        # The replacement may take the same name: it is a new task by its uid.
        return uid not in current and label in current.values() and len(current) == 3
    eventually(replaced, 15, f"a new task in slot {label}")
    eventually(lambda: replicas_cell(page) == "3/3", 15, "3/3 again")
    assert set(placed_in_page(page)) == set(placed_in_cluster(cluster.swctl, "web"))


def test_pausing_and_resuming_a_rollout_in_the_page(page: WebDriver, cluster: Cluster) -> None:
    row = "#services tr[data-service='default/web']"
    try:
        click(page, f"{row} button[data-action='pause']")
        eventually(lambda: result_box(page)[1].endswith("service/web paused"), 10, "paused")
        eventually(lambda: page.find_element(By.CSS_SELECTOR, f"{row} td.rollout").text
                   .startswith("paused"), 5, "the row saying paused")
        svc = json.loads(cluster.swctl("get", "svc", "web", "-o", "json").stdout)
        assert svc["spec"]["paused"] is True
        click(page, f"{row} button[data-action='resume']")
        eventually(lambda: result_box(page)[1].endswith("service/web resumed"), 10,
                   "resumed")
        eventually(lambda: not page.find_element(By.CSS_SELECTOR, f"{row} td.rollout").text
                   .startswith("paused"), 5, "the row no longer paused")
    finally:
        cluster.swctl("rollout", "resume", "service/web")


EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_custom_kinds_appear_with_their_printer_columns(page: WebDriver,
                                                       cluster: Cluster) -> None:
    swctl = cluster.swctl
    # Applied while the page is open: the kind, then its objects, arrive live.
    swctl("apply", "-f", str(EXAMPLES / "greeting-crd.yaml"))
    swctl("apply", "-f", str(EXAMPLES / "greeting.yaml"))
    table = "#custom .custom-kind[data-kind='greetings']"

    def headers() -> list[str]:
        return [str(th.text) for th in page.find_elements(By.CSS_SELECTOR, f"{table} th")]
    eventually(lambda: headers() == ["NAMESPACE", "NAME", "GREETS", "MESSAGE", "AGE"], 10,
               "the Greeting table with the CRD's printer columns")

    def rows() -> list[list[str]]:
        found: list[list[str]] = page.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent))", table)
        return found
    eventually(lambda: [r[:3] for r in rows()] == [["default", "world", "World"]], 10,
               "the greeting in the page")
    swctl.write("moon.yaml", """
        apiVersion: example.com/v1
        kind: Greeting
        metadata: {name: moon}
        spec: {name: Moon}
        """)
    swctl("apply", "-f", "moon.yaml")
    eventually(lambda: [r[:3] for r in rows()] == [["default", "moon", "Moon"],
                                                   ["default", "world", "World"]], 5,
               "a new greeting shown without a reload")
    # The same cells `swctl get greetings -A` prints.
    cli = swctl("get", "greetings", "-A").stdout.splitlines()
    assert cli[0].split() == ["NAMESPACE", "NAME", "GREETS", "MESSAGE", "AGE"]
    assert [line.split()[:3] for line in cli[1:]] == [r[:3] for r in rows()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_page_survives_a_dashboard_restart(browser: WebDriver, cluster: Cluster) -> None:
    port = free_port()
    proc, url = start_dashboard(cluster.swctl, port=port)
    again: Streaming | None = None
    try:
        browser.get(url)
        eventually(lambda: browser.find_element(By.ID, "conn").text == "live", 20, "live")
        page_id = browser.execute_script("return window.__shoalPageId")
        proc.kill()  # SIGKILL: nothing is saved, nothing needs to be
        eventually(lambda: browser.find_element(By.ID, "conn").get_attribute("data-state")
                   == "reconnecting", 10, "the page noticing the server gone")
        cluster.swctl("scale", "web=4", "--detach")  # a change while nobody watches
        again, _ = start_dashboard(cluster.swctl, port=port)
        eventually(lambda: replicas_cell(browser).endswith("/4"), 15,
                   "the page back live, with the change made meanwhile")
        assert browser.find_element(By.ID, "conn").text == "live"
        assert browser.execute_script("return window.__shoalPageId") == page_id
    finally:
        proc.kill()
        if again is not None:
            again.kill()
        cluster.swctl("scale", "web=3", "--verify-window", "0.3", timeout=60)


def test_malformed_objects_in_etcd_are_shown_and_break_nothing(page: WebDriver,
                                                              cluster: Cluster) -> None:
    swctl = cluster.swctl
    registry = kinds.Registry.builtin()
    services, nodes = registry.lookup("services"), registry.lookup("nodes")

    async def write() -> None:
        store = await client.Store.connect(swctl.etcd_url, prefix=swctl.prefix)
        try:
            # Written past admission, as a buggy writer or an old version might.
            await store.raw_put(store.key(services, "junk", "default"), json.dumps({
                "apiVersion": "shoal.io/v1", "kind": "Service",
                "metadata": {"name": "junk", "namespace": "default", "uid": "u-junk"},
                "spec": {"replicas": "lots", "template": 5, "networks": "front",
                         "endpoint": "nowhere"},
                "status": {"update": "x", "revision": "two", "conditions": "bad",
                           "endpoint": {"virtualIPs": "none"}}}).encode())
            await store.raw_put(store.key(nodes, "weird"), json.dumps({
                "apiVersion": "shoal.io/v1", "kind": "Node",
                "metadata": {"name": "weird", "uid": "u-weird", "labels": {"a": 1}},
                "spec": {"availability": 7}, "status": {"state": 5, "address": ["x"]}
            }).encode())
            # Not even an object: the store skips it (logged), the page never sees it.
            await store.raw_put(store.key(services, "noise", "default"), b"\x00not json")
        finally:
            await store.close()

    asyncio.run(write())
    try:
        eventually(lambda: page.find_elements(
            By.CSS_SELECTOR, "#services tr[data-service='default/junk']"), 10, "junk listed")
        eventually(lambda: page.find_elements(By.CSS_SELECTOR, ".node[data-node='weird']"),
                   10, "the weird node's column")
        # The page goes on following the cluster.
        swctl("scale", "web=2", "--detach")
        eventually(lambda: replicas_cell(page).endswith("/2"), 10, "web scaled in the page")
        assert page.find_element(By.ID, "conn").text == "live"
    finally:
        swctl("delete", "service", "junk", "noise")
        swctl("delete", "node", "weird")
        swctl("scale", "web=3", "--verify-window", "0.3", timeout=60)
    eventually(lambda: not page.find_elements(
        By.CSS_SELECTOR, "#services tr[data-service='default/junk']"), 10, "junk gone")
