"""``swctl init``, ``join``, ``join-token``, ``leave`` and the manager verbs of ``node``, as
users run them: real etcd members with TLS and auth, real controller-managers serving the
join endpoint, real agents (hollow runtime), each "machine" a data dir and a loopback
address of its own (127.0.N.1-5, N picked per run so parallel runs do not collide).

One cluster serves the module, built and torn down once (five nodes cost ~15 s); the
tests run in order and each leaves the cluster as the next expects.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from shoal.cli import init, nodeprocs
from shoal.join import client as join_client
from shoal.join import datadir, renewal, service
from shoal.pki import bundle as pki_bundle
from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki import tokens as pki_tokens
from shoal.store import client, etcd, projections
from tests.helpers import eventually_sync

PREFIX = "/joined"
NET = random.randint(100, 250)


def addr(i: int) -> str:
    return f"127.0.{NET}.{i}"


class Machine:
    """One node's data dir and address; ``swctl`` run as its operator would."""

    def __init__(self, base: Path, name: str, i: int) -> None:
        self.name = name
        self.address = addr(i)
        self.dir = base / name

    def start(self, *args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        # Detached processes even on a systemd host (test_cli_units.py tests the units).
        env.update(SHOAL_DATA_DIR=str(self.dir), SHOAL_PREFIX=PREFIX, SHOAL_SYSTEMD="no")
        return subprocess.Popen([sys.executable, "-m", "shoal.cli", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def swctl(self, *args: str, expect: int | None = 0,
              timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return finish(self, args, self.start(*args), expect, timeout)

    def flags(self) -> list[str]:
        return ["--advertise-addr", self.address, "--name", self.name, "--runtime", "hollow"]


def finish(m: Machine, args: tuple[str, ...], proc: subprocess.Popen[str],
           expect: int | None = 0, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    if expect is not None:
        assert proc.returncode == expect, (
            f"[{m.name}] swctl {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode or 0, out, err)


def together(*calls: tuple[Machine, tuple[str, ...], int]) -> list[str]:
    """Run several swctl at once (independent commands: the suite's time is mostly
    interpreter start-up); the outputs (stdout, or stderr when a failure is expected)."""
    started = [(m, args, expect, m.start(*args)) for m, args, expect in calls]
    done = [finish(m, args, proc, expect) for m, args, expect, proc in started]
    return [d.stderr if expect else d.stdout
            for d, (_, _, expect) in zip(done, calls, strict=True)]


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Machine]]:
    base = tmp_path_factory.mktemp("machines")
    ms = {name: Machine(base, name, i + 1)
          for i, name in enumerate(["m1", "m2", "m3", "w1", "w2"])}
    yield ms
    for m in ms.values():
        nodeprocs.stop_all(datadir.Layout(m.dir), grace=5.0)


def _token_and_addr(out: str) -> tuple[str, str]:
    match = re.search(r"swctl join --token (SWMTKN-1-\S+) (\S+)", out)
    assert match, out
    return match.group(1), match.group(2)


def node_table(m: Machine) -> dict[str, dict[str, str]]:
    """``node ls`` as rows keyed by name, cells cut at the header's column starts."""
    lines = m.swctl("node", "ls").stdout.splitlines()
    header = lines[0]
    names = re.findall(r"\S+(?: \S+)?", header.replace("MANAGER STATUS", "MANAGER_STATUS"))
    starts = [header.replace("MANAGER STATUS", "MANAGER_STATUS").index(n) for n in names]
    rows = {}
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, [*starts[1:], None], strict=True)]
        row = dict(zip(names, cells, strict=True))
        rows[row["NAME"]] = row
    return rows


def test_init_prints_dockers_message_and_the_join_command(machines: dict[str, Machine]) -> None:
    m1 = machines["m1"]
    out = m1.swctl("init", *m1.flags()).stdout
    assert re.match(r"Swarm initialized: current node \(\w{12}\) is now a manager\.\n", out), out
    assert "To add a worker to this swarm, run the following command:" in out
    token, where = _token_and_addr(out)
    assert where == f"{m1.address}:4243"
    assert "run 'swctl join-token manager' and follow the instructions" in out
    assert m1.swctl("join-token", "-q", "worker").stdout.strip() == token
    again = m1.swctl("init", *m1.flags(), expect=1).stderr
    assert "already part of a cluster" in again


def test_bad_tokens_and_plain_http_are_refused_and_change_nothing(
        machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    token = m1.swctl("join-token", "-q", "worker").stdout.strip()
    where = f"{m1.address}:4243"

    rotated = m1.swctl("join-token", "--rotate", "worker").stdout
    assert rotated.startswith("Successfully rotated worker join token.")
    wrong = token[:-25] + "0" * 25
    foreign = pki_tokens.make_token(pki_ca.make_ca().der, pki_tokens.new_secret())
    errs = together(*((w1, ("join", "--token", t, at, *w1.flags()), 1) for t, at in (
        (wrong, where), (foreign, where), (token, where), (token, f"http://{where}"))))
    assert "invalid join token: it matches neither the worker nor the manager token" in errs[0]
    assert "another CA than the token was made for" in errs[1]
    assert "nothing was sent" in errs[1]
    assert "this worker token was rotated" in errs[2]
    assert "swctl join-token worker" in errs[2]
    assert "speaks only HTTPS" in errs[3]
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(f"http://{where}/ca", timeout=5)
    assert plain.value.code == 400
    assert "speaks HTTPS only" in plain.value.read().decode()
    assert not datadir.Layout(w1.dir).exists()


def test_three_managers_and_two_workers_join_and_node_ls_shows_manager_status(
        machines: dict[str, Machine]) -> None:
    m1 = machines["m1"]
    where = f"{m1.address}:4243"
    manager_token = m1.swctl("join-token", "-q", "manager").stdout.strip()
    worker_token = m1.swctl("join-token", "-q", "worker").stdout.strip()
    for name in ("m2", "m3"):
        m = machines[name]
        out = m.swctl("join", "--token", manager_token, where, *m.flags()).stdout
        assert out.strip().endswith("This node joined a swarm as a manager.")
    # Any manager's endpoint admits: w2 joins through m3; workers may join at once.
    outs = together(*((machines[name], ("join", "--token", worker_token, through,
                                        *machines[name].flags()), 0)
                      for name, through in (("w1", where),
                                            ("w2", f"{machines['m3'].address}:4243"))))
    assert all(out.strip().endswith("This node joined a swarm as a worker.") for out in outs)
    cfg = datadir.load_node(datadir.Layout(machines["w1"].dir))
    assert cfg.role == "worker" and len(cfg.endpoints) == 3
    # Another machine cannot take a ready node's name.
    other = Machine(machines["w1"].dir.parent, "other", 6)
    err = other.swctl("join", "--token", worker_token, where, "--advertise-addr",
                      other.address, "--name", "w1", "--runtime", "hollow", expect=1).stderr
    assert "a node named w1 is already in the cluster and ready (at " in err
    assert not datadir.Layout(other.dir).exists()

    def settled() -> dict[str, dict[str, str]] | None:
        rows = node_table(machines["m2"])
        ok = len(rows) == 5 and all(r["STATUS"] == "ready" for r in rows.values())
        return rows if ok else None

    rows = eventually_sync(settled, timeout=30, what="five ready nodes")
    statuses = sorted(rows[n]["MANAGER_STATUS"] for n in ("m1", "m2", "m3"))
    assert statuses == ["Leader", "Reachable", "Reachable"]
    assert rows["w1"]["MANAGER_STATUS"] == rows["w2"]["MANAGER_STATUS"] == ""
    assert rows["w1"]["ROLE"] == "worker" and rows["m3"]["ROLE"] == "manager"
    # The manager's token is printed by any manager, with its own address.
    out = machines["m3"].swctl("join-token", "manager").stdout
    assert f"{machines['m3'].address}:4243" in out and manager_token in out
    err = machines["w1"].swctl("join-token", "worker", expect=1).stderr
    assert "needs a manager's data dir" in err


def _etcd_pid(m: Machine) -> int:
    procs = json.loads(datadir.Layout(m.dir).processes.read_text())["processes"]
    return int(next(p["pid"] for p in procs if p["name"] == nodeprocs.ETCD))


def test_the_first_managers_agent_outlives_its_etcd_member(
        machines: dict[str, Machine]) -> None:
    """m1's agent was started when m1's etcd was the only member; it must have learned
    the members that joined since, and go on reporting through them when m1's member
    dies: m1 stays ready."""
    m1, m2, m3 = machines["m1"], machines["m2"], machines["m3"]
    layout = datadir.Layout(m1.dir)
    agent_log = layout.logs / f"{nodeprocs.AGENT}.log"
    m3_url = f"https://{m3.address}:{service.ETCD_CLIENT_PORT}"

    def learned() -> bool:
        # Two clients in the agent's processes: its store, and its heartbeat child's.
        lines = [line for line in agent_log.read_text(errors="replace").splitlines()
                 if "etcd endpoints follow the cluster's members" in line and m3_url in line]
        return len(lines) >= 2
    eventually_sync(learned, timeout=30, what="m1's agent using the members that joined")
    os.kill(_etcd_pid(m1), signal.SIGKILL)
    try:
        # Ready throughout several heartbeat TTLs (3 s): each look is a whole swctl run.
        for _ in range(8):
            rows = node_table(m2)
            assert rows["m1"]["STATUS"] == "ready", rows["m1"]
            assert rows["m1"]["MANAGER_STATUS"] == "Unreachable", rows["m1"]
    finally:
        cfg = datadir.load_node(layout)
        peer = service.url("https", cfg.advertise_addr, service.ETCD_PEER_PORT)
        nodeprocs.stop_all(layout, only=(nodeprocs.ETCD,))  # forget the dead record
        init.start_etcd(layout, init.etcd_member(layout, cfg, f"{cfg.name}={peer}",
                                                 "existing"))
    eventually_sync(lambda: node_table(m1)["m1"]["MANAGER_STATUS"] in ("Leader", "Reachable"),
                    timeout=30, what="m1's etcd member back")


def test_demote_refused_at_the_quorum_edge(machines: dict[str, Machine]) -> None:
    m1, m3 = machines["m1"], machines["m3"]
    os.kill(_etcd_pid(m3), signal.SIGKILL)
    eventually_sync(lambda: node_table(m1)["m3"]["MANAGER_STATUS"] == "Unreachable",
                    timeout=15, what="m3 unreachable")
    err = m1.swctl("node", "demote", "m2", expect=1).stderr
    assert "demoting m2 would leave 1 of 2 managers reachable: quorum lost" in err
    assert node_table(m1)["m2"]["ROLE"] == "manager"  # nothing was changed
    # Demoting the dead one is what heals the cluster; m3 itself then stops being a
    # manager (its role watcher stops its controller-manager and drops the CA key).
    assert m1.swctl("node", "demote", "m3").stdout == "node/m3 demoted\n"
    rows = node_table(m1)
    assert rows["m3"]["MANAGER_STATUS"] == "" and rows["m3"]["ROLE"] == "worker"
    layout = datadir.Layout(m3.dir)
    eventually_sync(lambda: datadir.load_node(layout).role == "worker", timeout=15,
                    what="m3 demoted on its machine")
    assert not layout.key("ca").exists() and not nodeprocs.running(layout, nodeprocs.MANAGER)


def test_promote_makes_the_node_an_etcd_member(machines: dict[str, Machine]) -> None:
    m1, m3 = machines["m1"], machines["m3"]
    assert m1.swctl("node", "promote", "m3").stdout == "node/m3 promoted\n"
    eventually_sync(lambda: node_table(m1)["m3"]["MANAGER_STATUS"] == "Reachable",
                    timeout=30, what="m3 an etcd member again")
    assert datadir.load_node(datadir.Layout(m3.dir)).role == "manager"


def nodes_read_with_node_cert(layout: datadir.Layout) -> list[str]:
    """The Node keys etcd lets the node's own certificate list."""
    async def read() -> list[str]:
        node = datadir.load_node(layout)
        tls = pki_bundle.Bundle(layout.ca_cert, layout.cert("node"), layout.key("node"))
        store = await client.Store.connect(",".join(node.endpoints), tls=tls)
        try:
            start = f"/{node.prefix.strip('/')}/registry/nodes/".encode()
            kvs, _, _ = await store.etcd.range(start, etcd.prefix_end(start),
                                               keys_only=True)
            return [kv.key.decode() for kv in kvs]
        finally:
            await store.close()
    return asyncio.run(read())


def test_a_worker_cannot_make_itself_a_manager(machines: dict[str, Machine],
                                               tmp_path: Path) -> None:
    """A worker token makes a worker whatever the joined machine reports first: the
    join endpoint creates the Node with the token's role, and a report claiming
    ``manager`` (written with the node's own certificate, as a tampered agent would)
    is folded -- its label lands -- without touching the role."""
    m1 = machines["m1"]
    token = m1.swctl("join-token", "-q", "worker").stdout.strip()
    key = pki_ca.new_key()
    csr = certs.make_csr(key, certs.node_user("w9"))
    answer = join_client.join(m1.address, 4243, token,
                              csr.public_bytes(serialization.Encoding.PEM), "w9", "127.0.0.9")
    (tmp_path / "ca.crt").write_text(answer.ca)
    (tmp_path / "node.crt").write_text(answer.cert)
    (tmp_path / "node.key").write_bytes(pki_ca.key_pem(key))

    async def claim_manager() -> None:
        store = await client.Store.connect(",".join(answer.endpoints), answer.prefix,
                                           tls=pki_bundle.Bundle.from_dir(tmp_path))
        try:
            await store.etcd.put(projections.node_report_key(store.prefix, "w9"),
                                 projections.encode_node_report({
                                     "role": "manager", "labels": {"claimed": "manager"},
                                     "status": {}}))
        finally:
            await store.close()
    asyncio.run(claim_manager())

    def node() -> dict[str, Any]:
        got: dict[str, Any] = json.loads(m1.swctl("get", "node", "w9", "-o", "json").stdout)
        return got
    eventually_sync(lambda: node()["metadata"].get("labels", {}).get("claimed") == "manager",
                    30, "the report folded")
    assert node()["spec"]["role"] == "worker"
    m1.swctl("node", "rm", "--force", "w9")


def test_a_removed_nodes_certificate_is_refused_by_etcd(machines: dict[str, Machine]) -> None:
    m1, w2 = machines["m1"], machines["w2"]
    layout = datadir.Layout(w2.dir)
    node_cert = ["--etcd", ",".join(datadir.load_node(layout).endpoints),
                 "--etcd-ca", str(layout.ca_cert), "--etcd-cert", str(layout.cert("node")),
                 "--etcd-key", str(layout.key("node"))]
    # The node's own certificate reads what a node may (the Nodes), no more: an
    # operator's verb such as `node ls` (Tasks too) is refused it.
    assert f"{datadir.load_node(layout).prefix.rstrip('/')}/registry/nodes/w2" in (
        nodes_read_with_node_cert(layout))
    err = w2.swctl(*node_cert, "node", "ls", "-q", expect=1).stderr
    assert "its roles do not allow it" in err
    # A node renews its certificate through any manager, keeping its key ...
    before = layout.cert("node").read_bytes()
    join_addrs = datadir.load_node(layout).join_addrs
    assert renewal.renew_once(layout.ca_cert, layout.cert("node"), layout.key("node"),
                              join_addrs)
    assert layout.cert("node").read_bytes() != before
    nodeprocs.stop_all(layout, only=(nodeprocs.AGENT, nodeprocs.ROLE_WATCH))
    assert m1.swctl("node", "rm", "--force", "w2").stdout == "node/w2 removed\n"
    err = w2.swctl(*node_cert, "node", "ls", "-q", expect=1).stderr
    assert "shoal:node:w2" in err
    # ... but not once it is removed.
    assert not renewal.renew_once(layout.ca_cert, layout.cert("node"), layout.key("node"),
                                  join_addrs)


def test_leave(machines: dict[str, Machine]) -> None:
    w1, m2 = machines["w1"], machines["m2"]
    assert w1.swctl("leave").stdout == "Node left the swarm.\n"
    assert not datadir.Layout(w1.dir).exists()
    err = m2.swctl("leave", expect=1).stderr
    assert "this node is a manager" in err and "--force" in err
