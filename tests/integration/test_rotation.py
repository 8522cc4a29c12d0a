"""The rotation controller with a real controller-manager and hollow agents: a Secret
updated rolls the services that mount it, once, even when the controller-manager was
SIGKILLed between the secret's write and the roll; services that do not mount it stay."""

from __future__ import annotations

import signal
from pathlib import Path

from shoal.crds import mountdigests, sealed
from shoal.crds import taskstates as ts
from shoal.crds import updatemeta as um
from shoal.store import etcd_server
from tests.helpers import eventually
from tests.integration.cli_support import Swctl
from tests.integration.orchestration_support import SERVICES, Cluster

UPDATE = {"parallelism": 0, "order": "start-first", "monitor": "0s"}


async def test_a_secret_update_rolls_its_services_exactly_once(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    swctl = Swctl(etcd.url, prefix, tmp_path)
    ring = sealed.load(swctl.keyring)
    async with Cluster.open(etcd.url, prefix, tmp_path) as cluster:
        manager = cluster.start_manager()
        cluster.start_agent("n", count=2)
        await cluster.wait_ready(["n-0", "n-1"])
        swctl("secret", "create", "db_pass", "-", input="hunter2")
        await cluster.apply("api", {"replicas": 2, "updateConfig": UPDATE, "template": {
            "image": "x", "secrets": [{"source": "db_pass"}]}})
        await cluster.apply("other", {"replicas": 1, "template": {"image": "x"}})
        await cluster.wait_running("api", 2)

        async def service(name: str = "api") -> dict[str, object]:
            svc = await cluster.store.get(SERVICES, name, "default")
            return {"force": svc.spec.get("forceUpdate"),
                    "cause": svc.metadata.annotations.get(um.CHANGE_CAUSE),
                    "digests": mountdigests.recorded(svc)}

        async def recorded() -> bool:
            return (await service())["digests"] == {"secret/db_pass": ring.digest(b"hunter2")}
        await eventually(recorded, 10, what="mounted digests recorded")
        assert (await service())["force"] == 0  # first sight records, rolls nothing

        # The controller-manager dies; the new value lands while nobody watches.
        manager.signal(signal.SIGKILL)
        await manager.wait()
        swctl("secret", "update", "db_pass", "-", input="s3cr3t")
        cluster.start_manager("manager-2")

        async def rolled(force: int) -> bool:
            if (await service())["force"] != force:
                return False
            tasks = await cluster.current("api")
            return len(tasks) == 2 and all(
                ts.is_running(t) and t.spec.get("forceUpdate") == force for t in tasks)
        await eventually(lambda: rolled(1), 20, what="api rolled once")
        assert await service() == {"force": 1, "cause": "secret db_pass updated",
                                   "digests": {"secret/db_pass": ring.digest(b"s3cr3t")}}
        # Another update while it runs: one more roll, not two.
        swctl("secret", "update", "db_pass", "-", input="third")
        await eventually(lambda: rolled(2), 20, what="api rolled a second time")
        assert (await service())["force"] == 2
        assert (await service("other"))["force"] == 0  # mounts nothing: never rolled
