"""Manifests of every kind through ``swctl apply -f``: its admission and plan as a library
call against a real etcd, and a sample through the real CLI. Each case ends in a clear
error with nothing written (the keyspace is compared before and after), or in success."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cli import apply, errors, keyring, manifests
from shoal.crds import kinds, sealed
from shoal.store import client, etcd_server
from tests.fuzz import strategies, surfaces

FUZZ = settings.get_profile("fuzz")


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> keyring.Source:
    path = tmp_path_factory.mktemp("keyring") / "keyring.json"
    sealed.ensure(path)
    return keyring.Source(path)


@pytest.fixture(scope="module")
def loop_and_store(etcd: etcd_server.EtcdServer,
                   ) -> Iterator[tuple[asyncio.AbstractEventLoop, client.Store]]:
    """A loop of the test's own (hypothesis drives a plain function) and a store on it."""
    loop = asyncio.new_event_loop()
    prefix = f"/fuzz-apply-{os.getpid()}"
    store = loop.run_until_complete(client.Store.connect(etcd.url, prefix=prefix))
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


@settings(FUZZ, max_examples=200)
@given(strategies.manifest_input())
def test_admission_refuses_with_messages_or_admits(docs: list[Any] | str) -> None:
    """No cluster: what ``stack convert`` and ``apply --dry-run`` check first."""
    ring = surfaces._throwaway()
    try:
        text = docs if isinstance(docs, str) else surfaces.to_yaml(docs)
        parsed = manifests.parse(text, "fuzz.yaml")
        apply.admit_documents(kinds.Registry.builtin(), parsed, None, ring)
    except Exception as exc:
        lines = errors.messages_for(exc)
        assert lines is not None, surfaces._crash(exc).detail
        verdict = surfaces._message_verdict(lines)
        assert not verdict.bad, verdict.detail


def test_apply_writes_all_or_nothing(
        loop_and_store: tuple[asyncio.AbstractEventLoop, client.Store],
        ring: keyring.Source) -> None:
    loop, store = loop_and_store
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=250)
    @given(strategies.manifest_input(), st.sampled_from([None, "default", "other"]))
    def case(docs: list[Any] | str, namespace: str | None) -> None:
        verdict = loop.run_until_complete(
            surfaces.apply_library(store, docs, ring, namespace))
        outcomes[verdict.outcome] = outcomes.get(verdict.outcome, 0) + 1
        assert not verdict.bad, verdict.detail
    case()
    # The generator must reach both ends: some manifests apply, some are refused.
    assert outcomes.get(surfaces.OK, 0) >= 5 and outcomes.get(surfaces.ERROR, 0) > 10, outcomes


def test_real_swctl_apply_sample(etcd: etcd_server.EtcdServer, tmp_path: Path) -> None:
    """A few cases through the real ``swctl apply -f``: the message a user reads has no
    traceback, and a refused apply leaves etcd as it was."""
    prefix = f"/fuzz-cli-{os.getpid()}"
    keyring_path = tmp_path / "keyring.json"
    sealed.ensure(keyring_path)
    env = dict(os.environ, SHOAL_ETCD=etcd.url, SHOAL_PREFIX=prefix,
               SHOAL_KEYRING=str(keyring_path))
    env.pop("SHOAL_DEBUG", None)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(client.Store.connect(etcd.url, prefix=prefix))
    try:
        @settings(FUZZ, max_examples=4)
        @given(strategies.manifest_input())
        def case(docs: list[Any] | str) -> None:
            path = tmp_path / "fuzz.yaml"
            path.write_text(docs if isinstance(docs, str) else surfaces.to_yaml(docs),
                            errors="surrogateescape")
            before = loop.run_until_complete(surfaces.snapshot(store))
            code, _, stderr = surfaces.run_swctl(["apply", "-f", str(path), "--detach"],
                                                 env, tmp_path)
            verdict = surfaces.exit_verdict(code, stderr)
            assert not verdict.bad, verdict.detail
            if verdict.outcome == surfaces.ERROR:
                after = loop.run_until_complete(surfaces.snapshot(store))
                assert after == before, f"refused but wrote: {stderr}"
        case()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
