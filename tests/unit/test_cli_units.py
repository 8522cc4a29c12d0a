"""The systemd units rendered from nodeprocs' command lines: names, the ExecStart line
(the same argv the detached path runs, quoted so systemd reads it back exactly), the
service settings, and ``systemd-analyze verify`` on what is rendered."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cli import cluster, nodeprocs, units
from shoal.join import datadir

CFG = datadir.NodeConfig(name="m1", role="manager", advertise_addr="10.0.0.1",
                         endpoints=("https://10.0.0.1:2379", "https://10.0.0.2:2379"),
                         prefix="/shoal", join_addrs=("10.0.0.1:4243",))
REC = nodeprocs.StartRecord(systemd=True, runtime="docker", agent_args=("--dataplane", "none"),
                            listen_join=4243)


def render_all(layout: datadir.Layout, local_etcd: bool = True) -> dict[str, str]:
    argvs = {name: nodeprocs.argv_for(layout, name, CFG, REC)
             for name in (units.MANAGER, units.AGENT, units.ROLE_WATCH)}
    argvs[units.ETCD] = ["/usr/bin/etcd", "--name", "m1", "--data-dir",
                         str(layout.etcd_data)]
    return {name: units.render(layout, name, argv, local_etcd=local_etcd,
                               stop_grace=cluster.STOP_GRACE)
            for name, argv in argvs.items()}


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_default_data_dir_gets_plain_names_and_another_one_a_stable_suffix() -> None:
    assert units.unit_name(datadir.DEFAULT, "agent") == "shoal-agent.service"
    a = units.unit_name(Path("/srv/node-b"), "agent")
    assert a.startswith("shoal-agent-nodeb-") and a.endswith(".service")
    assert a == units.unit_name(Path("/srv/node-b"), "agent")
    # Two dirs with the same last component still differ.
    assert a != units.unit_name(Path("/other/node-b"), "agent")
    with pytest.raises(ValueError, match="no unit for 'dockerd'"):
        units.unit_name(datadir.DEFAULT, "dockerd")


@pytest.mark.parametrize("arg", ["plain", "/var/lib/shoal", "with space", "100%", "$HOME",
                                 'quote"d', "back\\slash", "it's", "%%n", ""])
def test_exec_line_is_read_back_as_the_same_argv(arg: str) -> None:
    argv = ["/usr/bin/python3", "-m", "shoal.cli", arg]
    assert units.exec_argv(units.exec_line(argv)) == argv


def test_exec_line_needs_an_absolute_program() -> None:
    with pytest.raises(ValueError, match="absolute program path"):
        units.exec_line(["python3", "-m", "shoal.cli"])


def test_exec_start_is_the_detached_argv_with_the_data_dir_baked_in(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path / "data dir")
    rendered = render_all(layout)
    for name in (units.MANAGER, units.AGENT, units.ROLE_WATCH):
        argv = units.exec_start(rendered[name])
        assert argv == nodeprocs.argv_for(layout, name, CFG, REC)
        assert argv[0] == sys.executable
        assert any(str(layout.root) in a for a in argv), argv
    agent = units.exec_start(rendered[units.AGENT])
    assert agent[agent.index("--etcd") + 1] == ",".join(CFG.endpoints)
    assert agent[-2:] == ["--dataplane", "none"] and "docker" in agent


def test_service_settings_match_the_detached_path(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path)
    rendered = render_all(layout)
    for name, text in rendered.items():
        s = settings(text)
        assert s["Restart"] == ["always"] and s["RestartSec"] == ["2"]
        assert s["StartLimitIntervalSec"] == ["0"]
        assert s["TimeoutStopSec"] == [f"{cluster.STOP_GRACE:g}"]
        assert s["LimitNOFILE"] == [str(units.LIMIT_NOFILE)]
        log = f"append:{layout.logs / (name + '.log')}"
        assert s["StandardOutput"] == s["StandardError"] == [log]
        assert s["WantedBy"] == ["multi-user.target"]
        assert units.ours(text, layout.root)
        assert not units.ours(text, layout.root / "other")
    # The agent's task shims and a dockerd it started outlive it, as when detached.
    assert settings(rendered[units.AGENT])["KillMode"] == ["process"]
    assert settings(rendered[units.ETCD])["KillMode"] == ["control-group"]


def test_processes_of_a_manager_are_ordered_after_its_etcd_member(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path)
    etcd_unit = units.unit_name(layout.root, units.ETCD)
    manager = render_all(layout, local_etcd=True)
    for name in (units.MANAGER, units.AGENT, units.ROLE_WATCH):
        s = settings(manager[name])
        assert etcd_unit in s["After"][0].split() and etcd_unit in s["Wants"][0].split()
    assert etcd_unit not in settings(manager[units.ETCD])["After"][0]
    worker = render_all(layout, local_etcd=False)
    assert etcd_unit not in worker[units.AGENT]
    assert "network-online.target" in settings(worker[units.AGENT])["Wants"][0]


def test_no_secret_is_on_a_command_line(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path)
    for text in render_all(layout).values():
        assert "BEGIN" not in text and "SWMTKN" not in text
        argv = units.exec_start(text)
        for flag in ("--etcd-key", "--etcd-cert", "--tls-dir", "--keyring"):
            if flag in argv:
                assert argv[argv.index(flag) + 1].startswith(str(layout.root))


def test_systemd_analyze_verify_accepts_the_rendered_units(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "install systemd (scripts/install.sh does)"
    layout = datadir.Layout(tmp_path / "my node")  # a space: quoted where it matters
    layout.logs.mkdir(parents=True)
    # The etcd unit runs the real binary when there is one (verify checks it exists).
    etcd = shutil.which("etcd") or "/bin/true"
    paths = []
    for name, text in render_all(layout).items():
        if name == units.ETCD:
            text = text.replace("/usr/bin/etcd", etcd)
        path = tmp_path / units.unit_name(layout.root, name)
        path.write_text(text)
        paths.append(str(path))
    proc = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True,
                          text=True, timeout=60)
    # verify exits 0 on many problems (an unknown KillMode is "ignored"): no output at all.
    noise = [line for line in proc.stderr.splitlines()
             if "network-online.target" not in line and "docker.service" not in line]
    assert proc.returncode == 0 and not noise, proc.stderr
