"""Fixtures for tests against a real dockerd: the daemon, the test image, clean-up.

dockerd is started by the tests themselves (CI starts no services), through the same
``ensure_dockerd`` that ``swctl up`` uses; if it cannot start, the fixture fails with
the daemon's log tail — a broken environment must show up as errors, never as skips.
The daemon is left running afterwards, like the system service it normally is.

Every test gets its own node name; whatever carries that node's label is removed when
the test ends, whether it passed or not.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.agent.docker.dockerd import DockerdError, ensure_dockerd
from shoal.agent.docker.driver import API_VERSION
from shoal.agent.docker.image import ensure_test_image
from shoal.agent.exec.executor import LABEL_NODE
from tests.e2e.netlab import Lab


@pytest.fixture(scope="session")
def docker_url() -> str:
    try:
        return ensure_dockerd(timeout=60)
    except DockerdError as exc:
        pytest.fail(f"cannot reach or start dockerd: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def docker_client(docker_url: str) -> Iterator[Any]:
    import docker

    client = docker.DockerClient(base_url=docker_url, version=API_VERSION)
    try:
        ensure_test_image(client)
    except Exception as exc:
        client.close()
        pytest.fail(f"cannot build the test image: {exc}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def node_name() -> str:
    """A node name no other test uses, so label-based clean-up touches only ours."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def docker_node(docker_client: Any, node_name: str) -> Iterator[str]:
    """``node_name``, with every container labelled with it removed afterwards."""
    yield node_name
    for container in docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_NODE}={node_name}"}):
        container.remove(force=True, v=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Network namespaces, bridges and veths for one test; all of them gone afterwards
    (node namespaces take their nftables tables and VXLAN devices with them)."""
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
        assert lab.leftovers() == []
