"""Docker Swarm mode on a private dockerd: the baseline the comparison benchmarks
(bench/converge.py, bench/update.py, bench/stack.py) run Shoal against.

A daemon of its own rather than the shared one: Swarm makes bridges, VXLANs and an ingress
network, and a Swarm mishap (moby#46661 deadlocks a daemon whose sandboxed containers exit
together) must never wedge the dockerd Shoal's agents and the tests use. Optionally in a
network namespace of its own, so Swarm's networking stays out of the host's. Everything it
made is wiped again by ``stop`` (and, for leftovers of a killed run, by the next ``start``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

import docker
import docker.errors

from shoal.agent.docker.dockerd import DOCKERD_FLAGS, ping
from shoal.agent.docker.driver import API_VERSION
from shoal.agent.docker.image import TEST_IMAGE, ensure_test_image_at
from shoal.store import etcd_server


def free_udp_port(first: int = 14789, last: int = 49151) -> int:
    """A free UDP port below the ephemeral range (Swarm's VXLAN port must be < 49152);
    not 4789, which Shoal's own overlay uses."""
    for port in range(first, last):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port for Swarm's data path")


class SwarmDaemon:
    """A dockerd of our own for Swarm, and everything needed to get rid of it again.

    ``name`` names its socket, data and exec roots, pid file and cgroup (so two benches
    never share a daemon); with ``netns`` the daemon runs inside a network namespace of
    that name, which ``start`` makes (loopback up) and ``stop`` deletes, and Swarm's
    bridges, VXLANs and VIPs stay there. ``prefer_local_images`` starts the daemon with
    ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``: its tasks then use an image present locally
    instead of asking the registry first (unreachable here), Swarm's own cost only."""

    def __init__(self, log: pathlib.Path, name: str = "shoal-bench-swarm",
                 netns: str | None = None, prefer_local_images: bool = False) -> None:
        self.log = log
        self.netns = netns
        self.netns_made = False
        self.prefer_local_images = prefer_local_images
        self.sock = f"/run/{name}.sock"
        self.url = f"unix://{self.sock}"
        self.data = pathlib.Path(f"/var/lib/{name}")
        self.exec_root = pathlib.Path(f"/run/{name}")
        self.pidfile = pathlib.Path(f"/run/{name}.pid")
        self.cgroup = name
        self.api: Any = None
        self.pid: int | None = None
        self.image_id = ""
        # Swarm makes this bridge in the daemon's namespace; in the host's it is ours to
        # delete unless it was there before (no other daemon here runs Swarm, but be sure).
        self.gwbridge_ours = netns is None and not pathlib.Path(
            "/sys/class/net/docker_gwbridge").exists()

    def start(self) -> None:
        if ping(self.url):
            raise RuntimeError(f"a dockerd already answers on {self.sock}: another run of "
                               "this benchmark? (stop it, or its daemon, first)")
        self._wipe()  # leftovers of a run that was killed
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")
        if dockerd is None:
            raise RuntimeError("dockerd is not installed")
        argv = [dockerd, *DOCKERD_FLAGS, f"--host={self.url}", f"--data-root={self.data}",
                f"--exec-root={self.exec_root}", f"--pidfile={self.pidfile}",
                f"--cgroup-parent={self.cgroup}"]
        if self.netns is not None:
            self._make_netns(self.netns)
            # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts
            # dockerd needs ("Devices cgroup isn't mounted").
            argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]
        env = {k: v for k, v in os.environ.items()
               if k not in ("DOCKER_HOST", "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE")}
        if self.prefer_local_images:
            env["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = "1"
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = proc.pid
        deadline = time.monotonic() + 60
        while not ping(self.url, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not start; see {self.log}")
            time.sleep(0.1)
        self.api = docker.APIClient(base_url=self.url, version=API_VERSION, timeout=30)
        ensure_test_image_at(self.url)
        self.image_id = str(self.api.inspect_image(TEST_IMAGE)["Id"])
        self.api.init_swarm(advertise_addr="127.0.0.1",
                            listen_addr=f"127.0.0.1:{etcd_server.free_port()}",
                            data_path_port=free_udp_port())

    def _make_netns(self, netns: str) -> None:
        # A namespace left by a killed run goes first: its old veths and VXLANs with it.
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        self.netns_made = True
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True,
                       capture_output=True)

    def cli_env(self) -> dict[str, str]:
        """The environment for the ``docker`` CLI to talk to this daemon."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return {**env, "DOCKER_HOST": self.url}

    def remove(self, name: str, timeout: float = 120.0) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_service(name)
        deadline = time.monotonic() + timeout
        while self.api.containers(all=True):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Swarm's containers still there {timeout:.0f} s after "
                                   "the service was removed")
            time.sleep(0.2)

    def stop(self) -> None:
        """Leave the swarm, stop the daemon (SIGKILL if it hangs) and wipe its state."""
        if self.api is not None:
            with contextlib.suppress(Exception):
                for svc in self.api.services():
                    self.api.remove_service(svc["ID"])
            with contextlib.suppress(Exception):
                self.api.leave_swarm(force=True)
            with contextlib.suppress(Exception):
                self.api.close()
        pid = self.pid
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
        if pid is not None:
            _terminate(pid, 30.0)
        self._wipe()
        if self.gwbridge_ours:
            subprocess.run(["ip", "link", "delete", "docker_gwbridge"], capture_output=True,
                           check=False)
        if self.netns_made and self.netns is not None:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True,
                           check=False)
            self.netns_made = False

    def _wipe(self) -> None:
        """Kill whatever the private daemon left (containerd, shims, containers), unmount
        and delete its directories."""
        with contextlib.suppress(OSError, ValueError):
            _terminate(int((self.exec_root / "containerd" / "containerd.pid").read_text()), 5.0)
        for proc in pathlib.Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes()
                if str(self.exec_root).encode() in argv and b"containerd" in argv:
                    os.kill(int(proc.name), signal.SIGKILL)
        for controller in ("pids", "memory", "cpu", "freezer"):
            parent = pathlib.Path("/sys/fs/cgroup") / controller / self.cgroup
            for procs in parent.glob("*/cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
        mounts = []
        with contextlib.suppress(OSError):
            for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
                point = line.split()[1]
                if point.startswith((str(self.data), str(self.exec_root))):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for path in (self.data, self.exec_root):
            shutil.rmtree(path, ignore_errors=True)
        for path in (pathlib.Path(self.sock), self.pidfile):
            path.unlink(missing_ok=True)
        for controller in ("pids", "memory", "cpu", "cpuacct", "cpuset", "blkio", "devices",
                           "freezer"):
            parent = pathlib.Path("/sys/fs/cgroup") / controller / self.cgroup
            for child in [*parent.glob("*/"), parent]:
                with contextlib.suppress(OSError):
                    child.rmdir()


def _terminate(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pathlib.Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
