"""Start and stop local etcd processes: the embedded default of ``swctl up``, the members
``swctl init``/``join`` run, and the tests' clusters.

A plain subprocess of Debian's ``etcd`` binary rather than anything clever: it is the
same server a production cluster runs, and killing it is a faithful failure to test.
``EtcdServer`` is one member (alone, or one of a cluster named by ``initial_cluster``);
``EtcdCluster`` starts N members on loopback addresses 127.0.0.1..N for tests and can
SIGKILL and restart any of them.

With ``tls`` (a ``ServerTLS``) a member serves clients and peers over https only and
demands a certificate from the cluster CA on both (``--client-cert-auth``,
``--peer-client-cert-auth``): etcd's client-certificate auth then takes the certificate's
CN as the user once auth is enabled.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import Bundle, ServerTLS

__all__ = ["CLUSTER_TIMINGS", "ETCD_DEFAULT_TIMINGS", "QUOTA_BYTES", "EtcdCluster",
           "EtcdNotInstalledError", "EtcdServer", "RaftTimings", "ServerTLS", "free_port"]

#: The ``--quota-backend-bytes`` of the etcd Shoal starts (etcd's recommended maximum is
#: 8 GiB); past it etcd raises its NOSPACE alarm and refuses writes until
#: ``shoal.store.maintenance`` (or an operator) compacts, defragments and disarms.
QUOTA_BYTES = 4 * 1024 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RaftTimings:
    """A member's raft timings: ``--heartbeat-interval``, ``--election-timeout`` (ms) and
    ``--pre-vote``. Every member of one cluster must run the same ones."""

    heartbeat_ms: int
    election_ms: int
    pre_vote: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ms <= 0 or self.election_ms < 5 * self.heartbeat_ms:
            raise ValueError(f"raft timings heartbeat {self.heartbeat_ms} ms, election "
                             f"{self.election_ms} ms: the election timeout must be at least "
                             "5 heartbeats (etcd's tuning guide)")

    def flags(self) -> list[str]:
        return ["--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                *(["--pre-vote"] if self.pre_vote else [])]


# etcd's own (3.4): what a member runs without flags.
ETCD_DEFAULT_TIMINGS = RaftTimings(100, 1000, pre_vote=False)

# What the members of a Shoal cluster run (docs/ha.md, "etcd's timings", has the
# measurements): a leader's death is noticed after 1-2 election timeouts instead of etcd's
# 1-2 s, which is what the 2 s write target after a leader kill needs; pre-vote keeps a
# member that was starved of CPU for a moment from deposing a healthy leader when it
# comes back with a higher term.
CLUSTER_TIMINGS = RaftTimings(50, 500, pre_vote=True)


class EtcdNotInstalledError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member with its data in ``data_dir``; alone unless ``initial_cluster`` says.

    ``stop``/``kill`` keep the data dir, so ``start`` again brings the same keys and
    revision back: that is how tests restart etcd under a running watch, and how a killed
    member rejoins its cluster (with a data dir, etcd ignores the initial-cluster flags).

    A member of a cluster gets its ``name``, the whole ``initial_cluster``
    (``"n1=http://a:2380,n2=http://b:2380"``, itself included) and
    ``initial_cluster_state``: ``new`` when the members start together, ``existing``
    when it joins a running cluster after ``member_add``. ``peer_host`` is the address
    its peers reach it on (``host`` by default).
    """

    def __init__(self, data_dir: Path | str, host: str = "127.0.0.1",
                 client_port: int | None = None, peer_port: int | None = None,
                 log_path: Path | str | None = None, extra_hosts: Sequence[str] = (),
                 compaction_retention: str = "5m", name: str = "shoal",
                 initial_cluster: str | None = None,
                 initial_cluster_state: str | None = None,
                 peer_host: str | None = None, tls: ServerTLS | None = None,
                 timings: RaftTimings | None = None,
                 max_txn_ops: int = 1024, quota_bytes: int = QUOTA_BYTES) -> None:
        self.data_dir = Path(data_dir)
        self.quota_bytes = quota_bytes
        self.max_txn_ops = max_txn_ops
        # A lone etcd has no elections to tune: etcd's defaults. A cluster member (even
        # the first one `swctl init` starts, alone at first) gets the cluster's timings,
        # since members added later must agree with it.
        self.timings = timings or (CLUSTER_TIMINGS if initial_cluster else None)
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        # More addresses to serve clients on, same port (e.g. a namespace nodes' bridge).
        self.extra_hosts = tuple(extra_hosts)
        self.peer_host = peer_host or host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(self.peer_host)
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / "etcd.log"
        self.compaction_retention = compaction_retention
        self.name = name
        self.initial_cluster = initial_cluster
        if initial_cluster_state not in (None, "new", "existing"):
            raise ValueError(f'initial_cluster_state "{initial_cluster_state}": expected '
                             '"new" or "existing"')
        self.initial_cluster_state = initial_cluster_state
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.peer_host}:{self.peer_port}"

    def command(self) -> list[str]:
        binary = shutil.which("etcd") or (
            "/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
        if binary is None:
            raise EtcdNotInstalledError(
                "the etcd binary is not on PATH: install it with `apt-get install etcd-server` "
                "or point swctl at a running etcd with --etcd URL")
        peer = self.peer_url
        state = self.initial_cluster_state or (
            "existing" if (self.data_dir / "member").exists() else "new")
        clients = ",".join([self.url, *(f"{self.scheme}://{h}:{self.client_port}"
                                         for h in self.extra_hosts)])
        tls: list[str] = []
        if self.tls is not None:
            t = self.tls
            tls = ["--cert-file", str(t.cert), "--key-file", str(t.key),
                   "--client-cert-auth", "--trusted-ca-file", str(t.ca),
                   "--peer-cert-file", str(t.peer_cert), "--peer-key-file", str(t.peer_key),
                   "--peer-client-cert-auth", "--peer-trusted-ca-file", str(t.ca)]
        return [
            binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", clients, "--advertise-client-urls", clients,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state", state,
            # Big batched transactions (128 ops) of small JSON objects: raise the
            # request size cap a little above the default 1.5 MiB for headroom.
            "--max-request-bytes", str(8 * 1024 * 1024),
            # A batch of 128 objects carries their projections (shoal.store.projections)
            # in the same transaction: more operations than etcd's default 128.
            "--max-txn-ops", str(self.max_txn_ops),
            "--quota-backend-bytes", str(self.quota_bytes),
            # etcd keeps every revision until it is compacted: without this, each task
            # status write would stay in the database for good and a busy cluster would
            # hit the quota (etcd then refuses all writes). Kubernetes' apiserver
            # compacts every 5 minutes; watchers further behind than that re-list.
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", self.compaction_retention,
            "--log-level", "warn", "--logger", "zap",
            *(self.timings.flags() if self.timings is not None else []),
            *tls,
        ]

    def start(self, timeout: float = 20.0, wait: bool = True) -> None:
        """Run etcd; with ``wait``, until it is healthy (for a cluster member: until the
        cluster has a leader, so members starting together are started with ``wait=False``
        and waited for afterwards)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        log.close()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until ``/health`` answers; the etcd log tail is in the error otherwise."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1,
                                            context=self.probe_context()) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.05)
        tail = ""
        try:
            tail = self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            pass
        raise RuntimeError(f"etcd at {self.url} did not become healthy ({last_error}); "
                           f"log {self.log_path}:\n{tail}")

    def probe_context(self) -> ssl.SSLContext | None:
        """The TLS context of this module's own HTTP probes (/health, status): the
        member's peer certificate as the client's, the CA checked, the host name not
        (a probe asks whether the member is up, not who it is)."""
        if self.tls is None:
            return None
        ctx = self.tls.client_bundle().client_context()
        ctx.check_hostname = False
        return ctx

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1..size, data under ``base_dir/m<i>``: for tests.

    Every member has its own loopback address, so killing one takes exactly its
    addresses away, as losing a machine would. With ``tls`` a CA is made under
    ``base_dir/pki`` and every member serves https with certificates from it;
    ``client_bundle(user)`` issues client certificates for any etcd user.
    ``extra_hosts``: addresses every member also serves clients on (same port), e.g. a
    bridge that network-namespace nodes reach the members through.
    """

    def __init__(self, base_dir: Path | str, size: int = 3,
                 compaction_retention: str = "5m", tls: bool = False,
                 timings: RaftTimings | None = None,
                 extra_hosts: Sequence[str] = (), quota_bytes: int = QUOTA_BYTES) -> None:
        if size < 1:
            raise ValueError(f"an etcd cluster needs at least one member, got {size}")
        base = Path(base_dir)
        self.base = base
        self.timings = timings
        self.compaction_retention = compaction_retention
        self.quota_bytes = quota_bytes
        self.pki_dir = base / "pki"
        self.ca: pki_ca.CA | None = None
        hosts = [f"127.0.0.{i + 1}" for i in range(size)]
        peer_ports = [free_port(h) for h in hosts]
        scheme = "http"
        server_tls: list[ServerTLS | None] = [None] * size
        if tls:
            scheme = "https"
            self.ca = pki_ca.make_ca()
            self.ca.save(self.pki_dir / "ca.crt", self.pki_dir / "ca.key")
            for i, host in enumerate(hosts):
                server_tls[i] = self._member_tls(i, [host, "127.0.0.1", *extra_hosts])
        initial = ",".join(f"m{i}={scheme}://{h}:{p}"
                           for i, (h, p) in enumerate(zip(hosts, peer_ports, strict=True)))
        self.members = [
            EtcdServer(base / f"m{i}" / "data", host=h, peer_port=p, name=f"m{i}",
                       initial_cluster=initial, log_path=base / f"m{i}" / "etcd.log",
                       compaction_retention=compaction_retention, tls=server_tls[i],
                       timings=timings, extra_hosts=extra_hosts, quota_bytes=quota_bytes)
            for i, (h, p) in enumerate(zip(hosts, peer_ports, strict=True))]

    def _member_tls(self, i: int, hosts: list[str]) -> ServerTLS:
        """Certificates for member ``i``. Its peer certificate also names 127.0.0.1:
        etcd checks a peer client's certificate against the connection's source
        address, and on loopback every member's connections come from 127.0.0.1."""
        assert self.ca is not None
        d = self.pki_dir
        cert, key = certs.issue_server(self.ca, hosts)
        peer, peer_key = certs.issue_peer(self.ca, hosts)
        pki_ca.write_file(d / f"m{i}-server.crt", pki_ca.cert_pem(cert), 0o644)
        pki_ca.write_file(d / f"m{i}-server.key", pki_ca.key_pem(key), 0o600)
        pki_ca.write_file(d / f"m{i}-peer.crt", pki_ca.cert_pem(peer), 0o644)
        pki_ca.write_file(d / f"m{i}-peer.key", pki_ca.key_pem(peer_key), 0o600)
        return ServerTLS(d / "ca.crt", d / f"m{i}-server.crt", d / f"m{i}-server.key",
                         d / f"m{i}-peer.crt", d / f"m{i}-peer.key")

    def prepare_member(self) -> EtcdServer:
        """The next member (``m<n>`` on 127.0.0.<n+1>), to be announced with
        ``member_add([server.peer_url])`` and then started: it joins with
        initial-cluster-state existing, as a manager joining a running cluster does."""
        i = len(self.members)
        host = f"127.0.0.{i + 1}"
        peer_port = free_port(host)
        tls = self._member_tls(i, [host, "127.0.0.1"]) if self.ca is not None else None
        scheme = "https" if tls is not None else "http"
        initial = ",".join([*(f"{m.name}={m.peer_url}" for m in self.members),
                            f"m{i}={scheme}://{host}:{peer_port}"])
        server = EtcdServer(self.base / f"m{i}" / "data", host=host, peer_port=peer_port,
                            name=f"m{i}", initial_cluster=initial,
                            initial_cluster_state="existing",
                            log_path=self.base / f"m{i}" / "etcd.log",
                            compaction_retention=self.compaction_retention, tls=tls,
                            timings=self.timings, quota_bytes=self.quota_bytes)
        self.members.append(server)
        return server

    def client_bundle(self, user: str = certs.ROOT_USER) -> Bundle:
        """A client certificate for etcd user ``user`` from the cluster's CA (made once)."""
        if self.ca is None:
            raise ValueError("this test cluster runs without TLS: start it with tls=True")
        name = user.replace(":", "_")
        cert_path, key_path = self.pki_dir / f"{name}.crt", self.pki_dir / f"{name}.key"
        if not cert_path.exists():
            cert, key = certs.issue_client(self.ca, user)
            pki_ca.write_file(key_path, pki_ca.key_pem(key), 0o600)
            pki_ca.write_file(cert_path, pki_ca.cert_pem(cert), 0o644)
        return Bundle(self.pki_dir / "ca.crt", cert_path, key_path)

    @property
    def urls(self) -> str:
        """Every member's client URL, comma-separated: what ``--etcd`` takes."""
        return ",".join(m.url for m in self.members)

    def start_all(self, timeout: float = 30.0) -> None:
        for member in self.members:
            member.start(wait=False)
        for member in self.members:
            member.wait_ready(timeout)

    def stop_all(self) -> None:
        for member in self.members:
            member.stop()

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (its data dir stays, for ``start``)."""
        self.members[i].kill()

    def start(self, i: int, timeout: float = 30.0) -> None:
        """Restart member ``i`` from its data dir: it rejoins the running cluster."""
        self.members[i].start(timeout=timeout)

    def leader(self, timeout: float = 10.0) -> int:
        """The index of the current leader, once exactly one running member says it is."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = [i for i, m in enumerate(self.members)
                       if m.running and _is_leader(m.url, m.probe_context())]
            if len(leaders) == 1:
                return leaders[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd members {self.urls} agree on no leader "
                                   f"(members saying they lead: {leaders})")
            time.sleep(0.05)


def _is_leader(url: str, context: ssl.SSLContext | None) -> bool:
    """Whether the member at ``url`` leads, from its /metrics (served whatever the auth
    settings, unlike the JSON gateway, which acts as a user once auth is on)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=1, context=context) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return False
    return any(line.strip() == "etcd_server_is_leader 1" for line in text.splitlines())
