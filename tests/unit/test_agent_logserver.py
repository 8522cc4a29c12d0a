"""The agent's log endpoint and ``swctl logs``' client, over a real loopback socket with a
fake driver; plus the pure parts of ``swctl logs`` and of ``swctl up --nodes``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent import logserver
from shoal.agent.exec.executor import MISSING, LogLine, Observed
from shoal.cli import errors, logs, netnodes
from shoal.crds import resource
from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import Bundle


class FakeDriver:
    """Just enough of an Executor: one workload with a log and a tap for more lines."""

    name = "fake"

    def __init__(self) -> None:
        self.lines = [LogLine("stdout", b"one", 1.5), LogLine("stderr", b"two \xff", 2.5),
                      LogLine("stdout", b"three", None)]
        self.more: asyncio.Queue[LogLine | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.asked: dict[str, Any] = {}

    async def observe(self, task_uid: str) -> Observed:
        return Observed("running", workload_id="c1") if task_uid == "uid-1" else MISSING

    async def logs(self, task_uid: str, follow: bool = False, tail: int | None = None,
                   timestamps: bool = False) -> AsyncIterator[LogLine]:
        self.asked = {"follow": follow, "tail": tail, "timestamps": timestamps}
        try:
            for line in self.lines[-tail:] if tail else self.lines:
                yield line
            while follow:
                item = await self.more.get()
                if item is None:
                    return
                yield item
        finally:
            self.closed.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeDriver, logserver.LogServer]]:
    driver = FakeDriver()
    server = logserver.LogServer({"n1": driver}, "127.0.0.1", 0)  # type: ignore[dict-item]
    await server.start()
    yield driver, server
    await server.close()


def test_records_round_trip_any_bytes() -> None:
    for line in (LogLine("stdout", b"plain", 1.25), LogLine("stderr", b"\x00\xffbin", None),
                 LogLine("stdout", b"", 3.0)):
        record = logserver.encode_line(line)
        assert record.endswith(b"\n") and record.count(b"\n") == 1
        back = logserver.decode_line(record[:-1])
        assert back == LogLine(line.stream, line.line, line.timestamp)
    assert logserver.decode_line(b"x 1 y") is None
    assert logserver.decode_line(b"o notatime y") is None


async def test_fetch_reads_every_line(served: tuple[FakeDriver, logserver.LogServer]) -> None:
    driver, server = served
    assert server.endpoint is not None
    got = [line async for line in logs.fetch(server.endpoint, "n1", "uid-1", tail=2)]
    assert got == driver.lines[-2:]
    assert driver.asked == {"follow": False, "tail": 2, "timestamps": True}


async def test_unknown_task_and_node_say_why(
        served: tuple[FakeDriver, logserver.LogServer]) -> None:
    _, server = served
    assert server.endpoint is not None
    with pytest.raises(logs.LogsError, match="no workload for task nope on node n1"):
        [x async for x in logs.fetch(server.endpoint, "n1", "nope")]
    with pytest.raises(logs.LogsError, match="node n9 is not served by this agent"):
        [x async for x in logs.fetch(server.endpoint, "n9", "uid-1")]


async def test_follow_streams_and_client_leaving_ends_the_driver_stream(
        served: tuple[FakeDriver, logserver.LogServer]) -> None:
    driver, server = served
    assert server.endpoint is not None
    stream = logs.fetch(server.endpoint, "n1", "uid-1", follow=True)
    got = [await anext(stream) for _ in range(3)]
    assert got == driver.lines
    await driver.more.put(LogLine("stdout", b"later", 9.0))
    assert await asyncio.wait_for(anext(stream), 5) == LogLine("stdout", b"later", 9.0)
    await stream.aclose()  # swctl got Ctrl-C; the workload stays silent
    await asyncio.wait_for(driver.closed.wait(), 5)


async def test_taken_port_falls_back_to_a_free_one(
        served: tuple[FakeDriver, logserver.LogServer]) -> None:
    driver, server = served
    assert server.endpoint is not None
    port = int(server.endpoint.rsplit(":", 1)[1])
    other = logserver.LogServer({"n1": driver}, "127.0.0.1", port)  # type: ignore[dict-item]
    try:
        endpoint = await other.start()
        assert endpoint.startswith("http://127.0.0.1:") and endpoint != server.endpoint
    finally:
        await other.close()


async def test_bad_requests_get_reasons(
        served: tuple[FakeDriver, logserver.LogServer]) -> None:
    _, server = served
    assert server.endpoint is not None
    _, host, port = logs._split_endpoint(server.endpoint)
    for request, status in ((b"POST /v1/logs/n1/uid-1 HTTP/1.1\r\n\r\n", b"405"),
                            (b"GET /v1/logs/n1/uid-1?tail=-3 HTTP/1.1\r\n\r\n", b"400"),
                            (b"GET /healthz HTTP/1.1\r\n\r\n", b"200")):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.split(b" ")[1] == status, reply


def _task(name: str, uid: str, node: str | None, slot: int = 1,
          state: str = "running", **status: Any) -> resource.Resource:
    return resource.Resource.from_dict({
        "apiVersion": "shoal.io/v1", "kind": "Task",
        "metadata": {"name": name, "namespace": "default", "uid": uid,
                     "labels": {"shoal.io/service": name.split(".")[0]}},
        "spec": {"slot": slot, **({"nodeName": node} if node else {})},
        "status": {"state": state, **status}})


def test_targets_and_task_matching() -> None:
    assert logs.split_target("service/web") == ("service", "web")
    assert logs.split_target("svc/web") == ("service", "web")
    assert logs.split_target("task/web.1.2") == ("task", "web.1.2")
    assert logs.split_target("web") == (None, "web")
    with pytest.raises(errors.CliError, match="expected service/NAME or task/NAME"):
        logs.split_target("pod/web")
    tasks = [_task("web.1.1", "3f6ccaf4-4c5e-0000-0000-000000000001", "n1"),
             _task("web.2.1", "3f6ccaf4-4c5e-0000-0000-000000000002", "n2")]
    assert logs.match_task(tasks, "web.2.1") is tasks[1]
    assert logs.match_task(tasks, "3f6ccaf44c5e00000000000000000001") is tasks[0]
    with pytest.raises(errors.CliError, match="ambiguous"):
        logs.match_task(tasks, "3f6ccaf4")
    assert logs.match_task(tasks, "zz") is None


def test_prefix_and_which_tasks_have_output() -> None:
    task = _task("web.3.2", "3f6ccaf4-4c5e-0000-0000-000000000001", "node-1", slot=3)
    assert logs.task_prefix(task) == "web.3.3f6ccaf44c5e@node-1"
    assert logs.has_workload(task)
    assert not logs.has_workload(_task("web.1.1", "u", None, state="pending"))
    assert not logs.has_workload(_task("web.1.1", "u", "n1", state="rejected"))
    assert logs.has_workload(_task("web.1.1", "u", "n1", state="failed", containerId="c"))


def test_netnode_plan_names_and_addresses() -> None:
    plan = netnodes.plan(3)
    assert plan.bridge == "shoal-ul0" and plan.host_address == "172.31.254.1"
    assert [(n.name, n.netns, n.veth, n.address) for n in plan.nodes] == [
        ("node-1", "shoal-node-1", "sv-node-1", "172.31.254.11"),
        ("node-2", "shoal-node-2", "sv-node-2", "172.31.254.12"),
        ("node-3", "shoal-node-3", "sv-node-3", "172.31.254.13")]
    assert plan.etcd_url(2379) == "http://172.31.254.1:2379"
    assert netnodes.Underlay.from_record(plan.record()) == plan
    long = netnodes.plan(12, "10.9.0.0/24", "br-x", "a-very-long-prefix")
    veths = {n.veth for n in long.nodes}
    assert len(veths) == 12 and all(len(v) <= netnodes.IFNAMSIZ for v in veths)
    with pytest.raises(netnodes.NetNodesError, match="too small"):
        netnodes.plan(10, "10.9.0.0/28")
    with pytest.raises(netnodes.NetNodesError, match="invalid --underlay"):
        netnodes.plan(1, "10.9.0.1/24")
    with pytest.raises(netnodes.NetNodesError, match="invalid --bridge"):
        netnodes.plan(1, bridge="a-name-longer-than-15")


async def test_session_merges_by_time_and_skips_removed_history(
        served: tuple[FakeDriver, logserver.LogServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    _, server = served
    args = argparse.Namespace(follow=False, tail=None, timestamps=False, no_trunc=False)
    session = logs.Session(args, {"n1": server.endpoint})
    live = _task("web.1.1", "uid-1", "n1")
    # Ended, its container removed since (e.g. by `swctl down`): silently nothing.
    gone = _task("web.2.1", "uid-gone", "n1", slot=2, state="failed", containerId="c9")
    session.attach([live, gone])
    await session.drain_all()
    out, err = capsys.readouterr()
    # Prefixes are padded to the longest of the tasks read.
    prefix = logs.task_prefix(live).ljust(len(logs.task_prefix(gone)))
    ours = [line for line in out.splitlines() if line.startswith("web.")]  # not the
    # server's own log lines, which share the test's stdout
    # "three" has no timestamp, so it sorts first; stderr lines go to stderr.
    assert ours == [f"{prefix}    | three", f"{prefix}    | one"]
    assert [line for line in err.splitlines() if line.startswith("web.")] == [
        f"{prefix}    | two \ufffd"]
    assert session.failed == 0


def _write_pair(d: Path, name: str, issued: tuple[Any, Any]) -> None:
    pki_ca.write_file(d / f"{name}.crt", pki_ca.cert_pem(issued[0]), 0o644)
    pki_ca.write_file(d / f"{name}.key", pki_ca.key_pem(issued[1]), 0o600)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster CA with node n1's, node n2's and the admin's certificates, and an admin
    certificate from another CA."""
    d = tmp_path_factory.mktemp("pki")
    cluster = pki_ca.make_ca()
    cluster.save(d / "ca.crt")
    _write_pair(d, "node", certs.issue_client(cluster, certs.node_user("n1")))
    _write_pair(d, "n2", certs.issue_client(cluster, certs.node_user("n2")))
    _write_pair(d, "root", certs.issue_client(cluster, "root"))
    _write_pair(d, "stranger", certs.issue_client(pki_ca.make_ca(), "root"))
    return d


async def test_over_tls_only_the_admin_reads_and_only_from_the_right_node(
        pki_dir: Path) -> None:
    driver = FakeDriver()
    server = logserver.LogServer({"n1": driver}, "127.0.0.1", 0,  # type: ignore[dict-item]
                                 tls=Bundle.from_dir(pki_dir, "node"))
    endpoint = await server.start()
    try:
        assert endpoint.startswith("https://127.0.0.1:")
        admin = Bundle.from_dir(pki_dir, "root")
        lines = [line async for line in logs.fetch(endpoint, "n1", "uid-1", tls=admin)]
        assert [line.line for line in lines] == [b"one", b"two \xff", b"three"]
        with pytest.raises(logs.LogsError, match=r'admin certificate only \(CN root\); this '
                           r'client presented CN "shoal:node:n2"'):
            await _drain(logs.fetch(endpoint, "n1", "uid-1", tls=Bundle.from_dir(pki_dir, "n2")))
        with pytest.raises(logs.LogsError, match="serves its logs over TLS"):
            await _drain(logs.fetch(endpoint, "n1", "uid-1"))
        with pytest.raises(logs.LogsError, match='certificate for "shoal:node:n1", not '
                           '"shoal:node:n9"'):
            await _drain(logs.fetch(endpoint, "n9", "uid-1", tls=admin))
        with pytest.raises(logs.LogsError, match=r"refused the TLS connection|broke"):
            await _drain(logs.fetch(endpoint, "n1", "uid-1",
                                    tls=Bundle.from_dir(pki_dir, "stranger")))
        with pytest.raises(logs.LogsError):  # plain HTTP gets no log line
            await _drain(logs.fetch(endpoint.replace("https", "http"), "n1", "uid-1"))
    finally:
        await server.close()


async def _drain(lines: AsyncIterator[LogLine]) -> None:
    async for _ in lines:
        pass
