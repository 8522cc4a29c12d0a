"""Start and stop a local etcd process: the embedded default of ``swctl up`` and the tests.

A plain subprocess of Debian's ``etcd`` binary rather than anything clever: it is the
same server a production cluster runs, and killing it is a faithful failure to test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class EtcdNotInstalledError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One single-member etcd cluster with its data in ``data_dir``.

    ``stop``/``kill`` keep the data dir, so ``start`` again brings the same keys and
    revision back: that is how tests restart etcd under a running watch.
    """

    def __init__(self, data_dir: Path | str, host: str = "127.0.0.1",
                 client_port: int | None = None, peer_port: int | None = None,
                 log_path: Path | str | None = None, extra_hosts: Sequence[str] = (),
                 compaction_retention: str = "5m") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        # More addresses to serve clients on, same port (e.g. a namespace nodes' bridge).
        self.extra_hosts = tuple(extra_hosts)
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / "etcd.log"
        self.compaction_retention = compaction_retention
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        binary = shutil.which("etcd") or (
            "/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
        if binary is None:
            raise EtcdNotInstalledError(
                "the etcd binary is not on PATH: install it with `apt-get install etcd-server` "
                "or point swctl at a running etcd with --etcd URL")
        peer = f"http://{self.host}:{self.peer_port}"
        clients = ",".join([self.url, *(f"http://{h}:{self.client_port}"
                                         for h in self.extra_hosts)])
        return [
            binary, "--name", "shoal", "--data-dir", str(self.data_dir),
            "--listen-client-urls", clients, "--advertise-client-urls", clients,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"shoal={peer}",
            "--initial-cluster-state", "existing" if (self.data_dir / "member").exists()
            else "new",
            # Big batched transactions (128 ops) of small JSON objects: raise the
            # request size cap a little above the default 1.5 MiB for headroom.
            "--max-request-bytes", str(8 * 1024 * 1024),
            # A batch of 128 objects carries their projections (shoal.store.projections)
            # in the same transaction: more operations than etcd's default 128.
            "--max-txn-ops", "1024",
            "--quota-backend-bytes", str(4 * 1024 * 1024 * 1024),
            # etcd keeps every revision until it is compacted: without this, each task
            # status write would stay in the database for good and a busy cluster would
            # hit the quota (etcd then refuses all writes). Kubernetes' apiserver
            # compacts every 5 minutes; watchers further behind than that re-list.
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", self.compaction_retention,
            "--log-level", "warn", "--logger", "zap",
        ]

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until ``/health`` answers; the etcd log tail is in the error otherwise."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
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
