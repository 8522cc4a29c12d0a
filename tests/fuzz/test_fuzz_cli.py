"""Every verb's argparse surface with random flags and values, in-process through
``shoal.cli.main`` against a real etcd (a key prefix of its own), and a sample through the
real ``swctl``: exit 0, or 1/2 with an ``error:`` message — never a traceback or an
``internal error``. Verbs that start processes or change the machine are left out
(``strategies.UNSAFE_VERBS``); verbs that wait get ``--detach``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings

from shoal.crds import sealed
from shoal.store import etcd_server
from tests.fuzz import strategies, surfaces

FUZZ = settings.get_profile("fuzz")


@pytest.fixture(scope="module")
def env(etcd: etcd_server.EtcdServer, tmp_path_factory: pytest.TempPathFactory,
        ) -> dict[str, str]:
    keyring_path = tmp_path_factory.mktemp("cli-keyring") / "keyring.json"
    sealed.ensure(keyring_path)
    return {"SHOAL_ETCD": etcd.url, "SHOAL_PREFIX": f"/fuzz-argv-{os.getpid()}",
            "SHOAL_KEYRING": str(keyring_path), "SHOAL_DEBUG": "",
            "SHOAL_DATA_DIR": str(tmp_path_factory.mktemp("cli-data"))}


def test_random_command_lines_in_process(env: dict[str, str]) -> None:
    @settings(FUZZ, max_examples=250)
    @given(strategies.cli_argv(strategies.safe_verb))
    def case(argv: list[str]) -> None:
        verdict = surfaces.cli_in_process(argv, env)
        assert not verdict.bad, verdict.detail
    case()


def test_random_command_lines_through_swctl(env: dict[str, str], tmp_path: Path) -> None:
    full = dict(os.environ, **env)
    full.pop("SHOAL_DEBUG")

    @settings(FUZZ, max_examples=5)
    @given(strategies.cli_argv(strategies.safe_verb))
    def case(argv: list[str]) -> None:
        code, _, stderr = surfaces.run_swctl(argv, full, tmp_path)
        verdict = surfaces.exit_verdict(code, stderr)
        assert not verdict.bad, f"{argv}: {verdict.detail}"
    case()
