"""Fixtures shared by the whole suite: a real etcd, and a store with a private key prefix.

One etcd process serves the session; each test gets its own key prefix, so tests never
see each other's objects and need no clean-up between them. Tests that must restart or
compact etcd start their own server with ``etcd_factory``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from shoal.store import etcd_server


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd_server.EtcdServer]:
    server = etcd_server.EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[[], etcd_server.EtcdServer]]:
    started: list[etcd_server.EtcdServer] = []

    def make() -> etcd_server.EtcdServer:
        server = etcd_server.EtcdServer(tmp_path / f"etcd{len(started)}" / "data")
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(etcd: etcd_server.EtcdServer, prefix: str) -> AsyncIterator[object]:
    from shoal.store import client

    s = await client.Store.connect(etcd.url, prefix=prefix)
    yield s
    await s.close()
