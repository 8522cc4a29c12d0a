"""The distributor controller on a real etcd: a node gets copies of exactly the Secrets
and Configs its live tasks mount (a tombstone for one that does not exist), a changed
source is copied again, and the copies go once no task of the node needs them."""

from __future__ import annotations

import sys
from pathlib import Path

from shoal.crds import kinds, resource
from shoal.store import client, codec, etcd_server, projections
from tests.helpers import LoggedProcess, eventually

REG = kinds.Registry.builtin()
TASKS, SECRETS, CONFIGS = (REG.lookup(k) for k in ("tasks", "secrets", "configs"))


async def test_copies_follow_the_tasks_of_each_node(
        etcd: etcd_server.EtcdServer, store: client.Store, tmp_path: Path) -> None:
    manager = LoggedProcess("distributor", [
        sys.executable, "-m", "shoal.cli", "controller-manager", "--etcd", etcd.url,
        "--prefix", store.prefix, "--controllers", "distributor"], tmp_path / "cm.log")
    try:
        secret = await store.create(SECRETS, resource.new(
            "Secret", "db", None, spec={"sealed": {"ciphertext": "v1"}}))
        await store.create(CONFIGS, resource.new("Config", "site", None, spec={"data": "a"}))
        template = {"image": "x", "secrets": [{"source": "db"}, {"source": "nope"}],
                    "configs": [{"source": "site"}]}
        task = await store.create(TASKS, resource.new("Task", "web.1", None, spec={
            "nodeName": "n1", "desiredState": "running", "template": template}))
        await store.create(TASKS, resource.new("Task", "other.1", None, spec={
            "nodeName": "n2", "template": {"image": "x"}}))
        nodes = projections.nodes_prefix(store.prefix)

        async def copies() -> dict[str, resource.Resource]:
            kvs, _ = await store.raw_list(nodes)
            return {kv.key[len(nodes):].decode(): codec.decode(kv.value, kv.mod_revision)
                    for kv in kvs if b"/secrets/" in kv.key or b"/configs/" in kv.key}

        async def three() -> dict[str, resource.Resource] | None:
            found = await copies()
            return found if len(found) == 3 else None
        found = await eventually(three, what="n1's three copies")
        assert set(found) == {"n1/secrets/default/db", "n1/secrets/default/nope",
                              "n1/configs/default/site"}  # nothing for n2
        assert found["n1/secrets/default/db"].spec == {"sealed": {"ciphertext": "v1"}}
        assert found["n1/secrets/default/nope"].metadata.annotations == {
            "shoal.io/missing": "true"}

        secret.spec["sealed"] = {"ciphertext": "v2"}
        await store.update(SECRETS, secret)

        async def rewritten() -> bool:
            db = (await copies()).get("n1/secrets/default/db")
            return db is not None and db.spec["sealed"] == {"ciphertext": "v2"}
        await eventually(rewritten, what="the new value copied")

        await store.update(TASKS, codec.with_status(task, {"state": "shutdown"}))

        async def gone() -> bool:
            return not await copies()
        await eventually(gone, what="copies removed once the task ended")
    except BaseException:
        print(*manager.text().splitlines()[-30:], sep="\n")
        raise
    finally:
        await manager.stop()
