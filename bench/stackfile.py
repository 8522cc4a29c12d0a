"""The stack file bench/stack.py deploys: N services of the test image on two overlay
networks, written as one compose file both ``swctl stack deploy`` and ``docker stack
deploy`` take unchanged.

Kept apart from the benchmark so the file can be looked at, and tried by hand, without a
cluster: ``python -m bench.stackfile > stack.yml``. What it holds, and why:

* every third service is a tiny web server (busybox ``httpd``) with 3 replicas on both
  networks, the others a ``sleep`` with 1 replica on ``back`` only: 30 services make 50
  tasks, the size bench/converge.py measures single services at, and 70 network
  attachments;
* both kinds end at once on SIGTERM (a shell trap; ``sleep`` as PID 1 would ignore it), so
  tearing a stack down between rounds never waits out a grace period;
* no published ports: Swarm's ingress needs IPVS, which this kernel lacks;
* an ``x-`` anchor with a merge key for what every service shares, as stack files do.
"""

from __future__ import annotations

import argparse
import json

IMAGE = "shoal/busybox"
NETWORKS = ("front", "back")
SERVER_EVERY = 3  # every third service serves HTTP
SERVER_REPLICAS = 3
WORKER_REPLICAS = 1
SERVER = "trap 'exit 0' TERM; hostname > /www/index.html; httpd -f -p 80 -h /www & wait"
WORKER = "trap 'exit 0' TERM; sleep 100000 & wait"


def service_names(services: int) -> list[str]:
    return [f"{'web' if is_server(i) else 'worker'}{i:02d}" for i in range(1, services + 1)]


def is_server(i: int) -> bool:
    return i % SERVER_EVERY == 0


def task_count(services: int) -> int:
    """How many tasks the stack runs once converged."""
    return sum(SERVER_REPLICAS if is_server(i) else WORKER_REPLICAS
               for i in range(1, services + 1))


def render(services: int = 30) -> str:
    """The file's text (see the module docstring). Written out rather than dumped, so the
    shared part is an anchor used through a merge key, as people write stack files."""
    lines = ['version: "3.8"', "", "x-common: &common",
             f"  image: {IMAGE}", "  stop_grace_period: 2s", "", "services:"]
    for i, name in zip(range(1, services + 1), service_names(services), strict=True):
        server = is_server(i)
        networks = ", ".join(NETWORKS) if server else "back"
        lines += [f"  {name}:", "    <<: *common",
                  f"    command: [sh, -c, {json.dumps(SERVER if server else WORKER)}]",
                  f"    networks: [{networks}]", "    deploy:",
                  f"      replicas: {SERVER_REPLICAS if server else WORKER_REPLICAS}",
                  f"      labels: {{bench.shoal.io/role: {'web' if server else 'worker'}}}"]
    lines += ["", "networks:"] + [f"  {n}:\n    driver: overlay" for n in NETWORKS]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=30)
    print(render(p.parse_args().services), end="")


if __name__ == "__main__":
    main()
