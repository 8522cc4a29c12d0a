"""The worked example end to end: the Greeting CRD, a Greeting, and greeting_operator.py
running as its own process — through the store API, and through `swctl apply`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.crds import kinds, resource
from shoal.runtime import cas
from shoal.store import client, errors, etcd_server
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
CRD_DOC: dict[str, Any] = yaml.safe_load((EXAMPLES / "greeting-crd.yaml").read_text())
GREETING_DOC: dict[str, Any] = yaml.safe_load((EXAMPLES / "greeting.yaml").read_text())
GREETING = kinds.kind_info_from_crd(CRD_DOC)
CRD = kinds.Registry.builtin().by_kind(kinds.CRD_KIND)


class Operator:
    """greeting_operator.py as a child process, its log in a file."""

    def __init__(self, etcd: etcd_server.EtcdServer, prefix: str, log_path: Path,
                 metrics_port: int) -> None:
        self.log_path = log_path
        self.metrics_port = metrics_port
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / "greeting_operator.py"), "--etcd", etcd.url,
                 "--prefix", prefix, "--metrics-port", str(metrics_port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "SHOAL_LOG_LEVEL": "debug"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def operator(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Iterator[Operator]:
    op = Operator(etcd, prefix, tmp_path / "operator.log", etcd_server.free_port())
    yield op
    op.stop()
    print("---- operator log ----\n" + op.log()[-5000:])  # shown when the test fails


async def greeting_status(store: client.Store, name: str = "world") -> dict[str, Any]:
    try:
        return (await store.get(GREETING, name)).status
    except errors.NotFoundError:
        return {}


async def test_greeting_operator_end_to_end_through_the_store(
        store: client.Store, operator: Operator) -> None:
    # Started before its CRD exists: the operator waits for the kind instead of failing.
    async def waiting() -> bool:
        return "waiting for kind to be registered" in operator.log()
    await eventually(waiting, timeout=15, what="operator waiting for the greetings kind")

    await store.create(CRD, resource.Resource.from_dict(CRD_DOC))
    created = await store.create(GREETING, resource.Resource.from_dict(GREETING_DOC))
    assert created.metadata.generation == 1

    async def greeted(message: str, generation: int) -> bool:
        st = await greeting_status(store)
        return st.get("message") == message and st.get("observedGeneration") == generation
    await eventually(lambda: greeted("Hello, World!", 1), timeout=15, what="first greeting")

    def rename(obj: resource.Resource) -> None:
        obj.spec["name"] = "Shoal"
    await cas.mutate(store, GREETING, await store.get(GREETING, "world"), rename)
    await eventually(lambda: greeted("Hello, Shoal!", 2), timeout=10, what="updated greeting")

    def scrape() -> str:
        url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: str = resp.read().decode()
            return body
    metrics = scrape()
    assert 'shoal_reconcile_total{controller="greetings.greet",result="success"}' in metrics
    assert 'shoal_informer_events_total{kind="greetings",type="added"}' in metrics
    assert any(line.startswith('shoal_leader{controller="greetings.greet"') and
               line.endswith(" 1.0") for line in metrics.splitlines())

    # Every log line about a reconcile names the controller and the key.
    lines = [json.loads(line) for line in operator.log().splitlines() if line.startswith("{")]
    started = [rec for rec in lines if rec.get("event") == "controller started"]
    assert started and started[0]["controller"] == "greetings.greet"

    # SIGTERM: a clean exit that gives the leader lease back for an instant take-over.
    assert operator.stop() == 0
    assert await store.raw_get(store.raw_key("leases", "controllers", "greetings.greet")) is None


def swctl(etcd: etcd_server.EtcdServer, prefix: str, *args: str,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swctl", "--etcd", etcd.url, "--prefix", prefix, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


async def test_greeting_operator_end_to_end_through_swctl_apply(
        store: client.Store, operator: Operator, etcd: etcd_server.EtcdServer,
        prefix: str) -> None:
    if shutil.which("swctl") is None or swctl(etcd, prefix, "apply", "--help").returncode != 0:
        pytest.skip("swctl apply is not available")
    for manifest in ("greeting-crd.yaml", "greeting.yaml"):
        done = swctl(etcd, prefix, "apply", "-f", str(EXAMPLES / manifest))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "created" in done.stdout, done.stdout

    async def greeted() -> bool:
        return (await greeting_status(store)).get("message") == "Hello, World!"
    await eventually(greeted, timeout=15, what="greeting via swctl apply")

    got = swctl(etcd, prefix, "get", "greeting", "world", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["status"]["message"] == "Hello, World!"
