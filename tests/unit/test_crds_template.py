"""crds.template: the one reading of a task template, for admission, the agent and drivers."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.crds import admission, kinds
from shoal.crds import template as tpl
from tests.unit.crds_support import errors_of, service


def test_defaults_of_an_image_only_template() -> None:
    t: dict[str, Any] = {"image": "nginx"}
    assert tpl.image(t) == "nginx"
    assert tpl.command(t) == tpl.Command() and tpl.command(t).resolve() == (None, None)
    assert tpl.env(t) == {} and tpl.labels(t) == {} and tpl.mounts(t) == []
    assert tpl.healthcheck(t) is None and tpl.resources(t) == tpl.Resources()
    assert tpl.stop_grace(t) == tpl.DEFAULT_STOP_GRACE == 10.0
    assert tpl.stop_signal(t) is None and tpl.workdir(t) is None
    assert tpl.secrets(t) == [] and tpl.configs(t) == []
    assert tpl.problems(t) == []


@pytest.mark.parametrize(("fields", "image_cmd", "expected"), [
    ({"command": ["httpd", "-f"]}, None, (None, ["httpd", "-f"])),
    ({"entrypoint": ["/init"]}, ["ignored"], (["/init"], [])),
    ({"entrypoint": ["/init"], "command": ["a"], "args": ["b"]}, None, (["/init"], ["a", "b"])),
    ({"args": ["-v"]}, ["serve"], (None, ["serve", "-v"])),
])
def test_command_follows_compose(fields: dict[str, Any], image_cmd: list[str] | None,
                                 expected: tuple[Any, Any]) -> None:
    assert tpl.command(fields).resolve(image_cmd) == expected


def test_only_args_need_the_images_cmd() -> None:
    assert tpl.command({"args": ["-v"]}).uses_image_cmd
    assert not tpl.command({"args": ["-v"], "command": ["x"]}).uses_image_cmd
    assert not tpl.command({"args": ["-v"], "entrypoint": ["x"]}).uses_image_cmd
    assert not tpl.command({}).uses_image_cmd


def test_argv_without_an_image() -> None:
    assert tpl.command({"entrypoint": ["sh", "-c"], "args": ["true"]}).argv() == \
        ["sh", "-c", "true"]


def test_env_is_text() -> None:
    assert tpl.env({"env": {"A": 1, "B": None, "C": "x"}}) == {"A": "1", "B": "", "C": "x"}


def test_stop_grace_reads_durations_and_names_the_field() -> None:
    assert tpl.stop_grace({"stopGracePeriod": "1m30s"}) == 90.0
    assert tpl.stop_grace({"stopGracePeriod": 3}) == 3.0
    with pytest.raises(tpl.TemplateError) as err:
        tpl.stop_grace({"stopGracePeriod": "soon"})
    assert err.value.path == "spec.template.stopGracePeriod"
    assert str(err.value).startswith('spec.template.stopGracePeriod: invalid duration "soon"')
    assert isinstance(err.value, ValueError)


def test_mounts_and_the_bind_rule() -> None:
    assert tpl.mounts({"mounts": [{"target": "/data"},
                                  {"type": "bind", "source": "/srv", "target": "/srv",
                                   "readOnly": True}]}) == [
        tpl.Mount("volume", "", "/data"), tpl.Mount("bind", "/srv", "/srv", True)]
    bad = {"image": "x", "mounts": [
        {"type": "bind", "target": "data"},
        {"type": "bind", "source": "rel", "target": "/r"},
        {"type": "tmpfs", "source": "x", "target": "/t"}]}
    assert [str(p) for p in tpl.problems(bad)] == [
        'spec.template.mounts[0].target: must be an absolute path, got "data"',
        "spec.template.mounts[0].source: required for a bind mount: the host path to mount",
        'spec.template.mounts[1].source: a bind mount\'s source must be an absolute host '
        'path, got "rel"',
        "spec.template.mounts[2].source: a tmpfs mount takes no source",
    ]
    with pytest.raises(tpl.TemplateError, match=r"mounts\[0\]\.target"):
        tpl.mounts(bad)


def test_healthcheck() -> None:
    check = tpl.healthcheck({"healthcheck": {"test": ["CMD", "true"], "interval": "5s",
                                             "retries": 2}})
    assert check == tpl.Healthcheck(["CMD", "true"], interval=5.0, retries=2)
    assert check is not None and not check.disabled
    off = tpl.healthcheck({"healthcheck": {"test": ["NONE"]}})
    assert off is not None and off.disabled
    with pytest.raises(tpl.TemplateError, match="CMD needs the command"):
        tpl.healthcheck({"healthcheck": {"test": ["CMD"]}})
    with pytest.raises(tpl.TemplateError, match=r"test\[0\]: must be NONE, CMD or CMD-SHELL"):
        tpl.healthcheck({"healthcheck": {"test": ["curl", "x"]}})


def test_healthcheck_timings_docker_refuses_are_refused_here() -> None:
    # Docker takes 0 (the default) or at least 1 ms; admission used to accept 500us and
    # every start of the task then failed.
    assert tpl.healthcheck({"healthcheck": {"interval": 0, "timeout": "1ms"}}) == \
        tpl.Healthcheck([], interval=0.0, timeout=0.001)
    with pytest.raises(tpl.TemplateError) as err:
        tpl.healthcheck({"healthcheck": {"test": ["CMD", "x"], "startPeriod": "500us"}})
    assert str(err.value) == ('spec.template.healthcheck.startPeriod: must be at least 1ms '
                              '(or 0 for the default), got string "500us"')
    doc = service()
    doc["spec"]["template"]["healthcheck"] = {"test": ["CMD", "true"], "interval": "10us"}
    assert errors_of(doc, kinds.Registry.builtin()) == [
        "spec.template.healthcheck.interval: must be at least 1ms (or 0 for the default), "
        'got string "10us"']


def test_resources() -> None:
    read = tpl.resources({"resources": {"limits": {"cpus": 0.5, "memory": "64Mi"},
                                        "reservations": {"memory": "16Mi", "cpus": 0}}})
    assert read == tpl.Resources(limit_cpus=0.5, limit_memory=64 << 20,
                                 reserve_memory=16 << 20)
    assert read.limit_nano_cpus == 500_000_000
    with pytest.raises(tpl.TemplateError, match=r"reservations\.cpus: reserves more"):
        tpl.resources({"resources": {"limits": {"cpus": 1}, "reservations": {"cpus": 2}}})


def test_secrets_and_configs_land_where_swarm_puts_them() -> None:
    t = {"secrets": [{"source": "key"}, {"source": "crt", "target": "tls.crt"},
                     {"source": "abs", "target": "/etc/abs", "uid": "1000", "gid": "50",
                      "mode": 0o400}],
         "configs": [{"source": "site"}, {"source": "nginx", "target": "/etc/nginx.conf",
                                          "mode": 0o555}]}
    assert tpl.secrets(t) == [tpl.FileRef("key", "/run/secrets/key"),
                              tpl.FileRef("crt", "/run/secrets/tls.crt"),
                              tpl.FileRef("abs", "/etc/abs", "1000", "50", 0o400)]
    assert tpl.configs(t) == [tpl.FileRef("site", "/site", "0", "0", 0o444),
                              tpl.FileRef("nginx", "/etc/nginx.conf", mode=0o555)]


def test_file_references_refused_as_docker_refuses_them() -> None:
    t = {"image": "x",
         "secrets": [{"source": "a", "uid": "root", "mode": 0o1000},
                     {"source": "b", "target": "../../etc/shadow"},
                     {"source": "c", "target": "c"}],
         "configs": [{"source": "d", "target": "etc/d.conf"},
                     {"source": "e", "target": "/run/secrets/c"}],
         "mounts": [{"type": "tmpfs", "target": "/e/"}, {"type": "tmpfs", "target": "/e"}]}
    assert [str(p) for p in tpl.problems(t)] == [
        'spec.template.secrets[0].uid: must be a numeric id such as "1000" (names are not '
        'looked up), got string "root"',
        "spec.template.secrets[0].mode: must be permission bits 0..0o777 (0..511; 0o444 = "
        "292 is the default), got integer 512",
        'spec.template.secrets[1].target: must not contain "..", got "../../etc/shadow"',
        'spec.template.configs[0].target: must be an absolute path, got "etc/d.conf"; '
        'write "/etc/d.conf" (where Docker puts a relative one)',
        'spec.template.mounts[1].target: "/e" is already the target of '
        "spec.template.mounts[0]; give each a different target",
        'spec.template.configs[1].target: "/run/secrets/c" is already the target of '
        "spec.template.secrets[2]; give each a different target",
    ]


def test_of_and_garbage_fields_name_their_path() -> None:
    with pytest.raises(tpl.TemplateError, match=r"^spec\.template: must be a mapping, got missing"):
        tpl.of({})
    with pytest.raises(tpl.TemplateError, match=r"^spec\.template\.image: must be a non-empty"):
        tpl.image({"image": " "})
    with pytest.raises(tpl.TemplateError, match=r"^spec\.template\.command: must be a list"):
        tpl.command({"command": "httpd -f"})
    with pytest.raises(tpl.TemplateError, match=r"^spec\.template\.env: must be a mapping"):
        tpl.env({"env": ["A=1"]})


def test_admission_uses_the_accessors_and_says_each_thing_once() -> None:
    registry = kinds.Registry.builtin()
    doc = service()
    doc["spec"]["template"]["stopGracePeriod"] = "soon"
    # The schema's duration format and the accessor agree word for word: one message.
    [message] = errors_of(doc, registry)
    assert message.startswith('spec.template.stopGracePeriod: invalid duration "soon"')
    doc = service()
    doc["spec"]["template"]["mounts"] = [{"type": "bind", "source": "/srv", "target": "/x"}]
    assert tpl.mounts(admission.admit(doc, registry).spec["template"])[0].source == "/srv"


def test_process_settings_read_as_docker_runs_them() -> None:
    t = {"image": "nginx", "init": True, "capAdd": ["net_admin", "CAP_SYS_TIME", "NET_ADMIN"],
         "capDrop": ["NET_RAW", "sys_time"],
         "sysctls": {"net.core.somaxconn": 1024, "kernel.shmmax": "65536"},
         "ulimits": {"nproc": {"soft": 64, "hard": 128}, "memlock": {"soft": -1, "hard": -1}}}
    assert tpl.init(t) is True and tpl.init({}) is None and tpl.init({"init": False}) is False
    # Normalised, de-duplicated, sorted; added wins over dropped (Docker's rule).
    assert tpl.capabilities(t) == tpl.Capabilities(("CAP_NET_ADMIN", "CAP_SYS_TIME"),
                                                   ("CAP_NET_RAW",))
    assert tpl.capabilities({"capDrop": ["all", "chown"], "capAdd": ["CHOWN"]}) == \
        tpl.Capabilities(("CAP_CHOWN",), ("ALL",))
    assert tpl.sysctls(t) == {"net.core.somaxconn": "1024", "kernel.shmmax": "65536"}
    assert tpl.ulimits(t) == [tpl.Ulimit("memlock", -1, -1), tpl.Ulimit("nproc", 64, 128)]
    assert tpl.problems(t) == []


def test_process_settings_refused_with_what_to_write() -> None:
    registry = kinds.Registry.builtin()
    doc = service()
    doc["spec"]["template"].update({
        "init": "yes", "capAdd": ["NET_ADMN"], "capDrop": ["bogus"],
        "sysctls": {"vm.max_map_count": "262144", "net..x": "1"},
        "ulimits": {"nofiles": {"soft": 1, "hard": 2}, "nproc": {"soft": 10, "hard": 5},
                    "core": {"soft": -1, "hard": 0}, "stack": {"soft": -2, "hard": 1}}})
    messages = errors_of(doc, registry)
    assert "spec.template.init: must be a boolean, got string \"yes\"" in messages[0]
    text = "\n".join(messages)
    assert ('spec.template.capAdd[0]: unknown capability "NET_ADMN" (did you mean '
            "NET_ADMIN?)") in text
    assert 'spec.template.capDrop[0]: unknown capability "bogus"; write a name' in text
    assert ("spec.template.sysctls[\"vm.max_map_count\"]: vm.max_map_count is not "
            "namespaced: setting it would change the whole node") in text
    assert "spec.template.sysctls[\"net..x\"]: must be a kernel parameter" in text
    assert 'spec.template.ulimits.nofiles: unknown limit "nofiles" (did you mean nofile?)' \
        in text
    assert ("spec.template.ulimits.nproc: the soft limit (10) is above the hard limit (5)"
            in text)
    assert "spec.template.ulimits.core: the soft limit (unlimited) is above" in text
    assert "spec.template.ulimits.stack.soft: must be >= -1" in text
    # The readers refuse the same things on their own (the agent's view of a bad object).
    with pytest.raises(tpl.TemplateError, match=r"ulimits\.nproc: must be \{soft: N"):
        tpl.ulimits({"ulimits": {"nproc": 5}})
