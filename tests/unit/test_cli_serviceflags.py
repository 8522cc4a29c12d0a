"""shoal/cli/serviceflags.py: docker's service create/update flags -> the Service spec."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from shoal.cli import errors, serviceflags
from shoal.cli.main import build_parser


def create(line: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(["service", "create", *shlex.split(line)])
    return serviceflags.create_manifest(args, args.name or "x", None, environ or {})


def update(live: dict[str, Any], line: str) -> dict[str, Any]:
    args = build_parser().parse_args(["service", "update", *shlex.split(line)])
    return serviceflags.update_manifest(live, args, {})


def test_the_tutorial_create_becomes_a_manifest() -> None:
    doc = create("--name web --replicas 2 -p 8080:80 shoal/busybox httpd -f -p 80")
    assert doc == {
        "apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"replicas": 2,
                 "template": {"image": "shoal/busybox", "command": ["httpd", "-f", "-p", "80"]},
                 "endpoint": {"ports": [{"target": 80, "published": 8080}]}}}


def test_every_create_flag_lands_in_its_field() -> None:
    doc = create(
        "--name api --mode global --constraint node.role==worker --constraint "
        "node.labels.zone!=c --placement-pref spread=node.labels.zone --replicas-max-per-node 2 "
        "-p 53:53/udp -p published=9000,target=90,mode=host --network a --network b "
        "-e A=1 -e FROM_ENV -e UNSET --label tier=front --container-label c=d "
        "--health-cmd 'wget -q localhost' --health-interval 2s --health-retries 3 "
        "--restart-condition on-failure --restart-delay 1s --restart-max-attempts 4 "
        "--limit-cpu 0.5 --limit-memory 64m --reserve-cpu 0.25 --reserve-memory 32Mi "
        "--update-parallelism 2 --update-delay 1m05s --update-order start-first "
        "--update-failure-action rollback --update-monitor 10s --update-max-failure-ratio 0.2 "
        "--rollback-parallelism 0 --rollback-order start-first --stop-grace-period 3s "
        "--entrypoint '/bin/sh -c' -w /srv shoal/busybox:1.0",
        {"FROM_ENV": "yes"})
    spec = doc["spec"]
    assert doc["metadata"] == {"name": "api", "labels": {"tier": "front"}}
    assert spec["mode"] == "global" and "replicas" not in spec
    assert spec["placement"] == {"constraints": ["node.role==worker", "node.labels.zone!=c"],
                                 "preferences": [{"spread": "node.labels.zone"}],
                                 "maxReplicasPerNode": 2}
    assert spec["endpoint"]["ports"] == [
        {"target": 53, "published": 53, "protocol": "udp"},
        {"published": 9000, "target": 90, "mode": "host"}]
    assert spec["networks"] == ["a", "b"]
    t = spec["template"]
    # -e KEY takes the caller's value, as docker; an unset one is dropped.
    assert t["env"] == {"A": "1", "FROM_ENV": "yes"}
    assert t["labels"] == {"c": "d"}
    assert t["healthcheck"] == {"test": ["CMD-SHELL", "wget -q localhost"], "interval": "2s",
                                "retries": 3}
    assert t["resources"] == {"limits": {"cpus": 0.5, "memory": "64m"},
                              "reservations": {"cpus": 0.25, "memory": "32Mi"}}
    assert t["entrypoint"] == ["/bin/sh", "-c"] and t["workdir"] == "/srv"
    assert t["stopGracePeriod"] == "3s"
    assert spec["restartPolicy"] == {"condition": "on-failure", "delay": "1s", "maxAttempts": 4}
    assert spec["updateConfig"] == {"parallelism": 2, "delay": "1m05s", "order": "start-first",
                                    "failureAction": "rollback", "monitor": "10s",
                                    "maxFailureRatio": 0.2}
    assert spec["rollbackConfig"] == {"parallelism": 0, "order": "start-first"}


@pytest.mark.parametrize(("line", "message"), [
    ("--mode global --replicas 2 img", "--replicas cannot be used with --mode global"),
    ("-p 80:http img", '-p/--publish "80:http": "http" is not a port number'),
    ("-p proto=udp img", '"proto=udp" is not one of published=, target='),
    ("--placement-pref zone img", '--placement-pref "zone": expected spread=node.labels.KEY'),
    ("--no-healthcheck --health-cmd true img", "--no-healthcheck cannot be combined"),
    ("-e =x img", '-e/--env "=x": expected KEY=VALUE'),
])
def test_bad_create_flags_say_which_flag(line: str, message: str) -> None:
    with pytest.raises(errors.CliError, match=None) as caught:
        create(line)
    assert message in str(caught.value)


def test_bad_durations_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        create("--update-delay soon img")
    assert "--update-delay: invalid duration" in capsys.readouterr().err


LIVE: dict[str, Any] = {
    "apiVersion": "shoal.io/v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                 "annotations": {}},
    "spec": {"replicas": 2, "forceUpdate": 0,
             "template": {"image": "shoal/busybox", "env": {"A": "1"}},
             "placement": {"constraints": ["node.role==worker"]},
             "endpoint": {"mode": "vip", "ports": [{"target": 80, "published": 8080,
                                                    "protocol": "tcp", "mode": "ingress"}]},
             "updateConfig": {"parallelism": 1, "order": "stop-first"}}}


def test_update_edits_only_what_the_flags_name() -> None:
    doc = update(LIVE, "--image shoal/busybox:2.0 --replicas 6 --update-parallelism 2 "
                       "--env-add B=2 --env-rm A --label-add v=2 --constraint-add "
                       "node.labels.zone==a --publish-add 9090:90 --network-add appnet web")
    spec = doc["spec"]
    assert spec["template"] == {"image": "shoal/busybox:2.0", "env": {"B": "2"}}
    assert spec["replicas"] == 6
    assert spec["updateConfig"] == {"parallelism": 2, "order": "stop-first"}
    assert spec["placement"]["constraints"] == ["node.role==worker", "node.labels.zone==a"]
    assert [p["target"] for p in spec["endpoint"]["ports"]] == [80, 90]
    assert spec["networks"] == ["appnet"]
    assert doc["metadata"]["labels"] == {"app": "web", "v": "2"}
    assert LIVE["spec"]["template"]["image"] == "shoal/busybox"  # the input is untouched


def test_update_removals_drop_emptied_fields_and_force_bumps() -> None:
    doc = update(LIVE, "--constraint-rm node.role==worker --publish-rm 80 --force web")
    spec = doc["spec"]
    assert "placement" not in spec
    assert spec["endpoint"] == {"mode": "vip"}
    assert spec["forceUpdate"] == 1


@pytest.mark.parametrize(("line", "message"), [
    ("--env-rm NOPE web", '--env-rm "NOPE": the service has no environment variable NOPE '
                          "(it has: A)"),
    ("--constraint-rm node.role==boss web", '--constraint-rm "node.role==boss": the service '
                                            "has no such constraint (it has: "
                                            "node.role==worker)"),
    ("--publish-rm 81 web", '--publish-rm "81": the service has no such published port '
                            "(it has: 8080:80/tcp)"),
])
def test_bad_update_flags_say_what_the_service_has(line: str, message: str) -> None:
    with pytest.raises(errors.CliError) as caught:
        update(LIVE, line)
    assert message in str(caught.value)


def test_update_replicas_of_a_global_service_is_refused() -> None:
    live = {**LIVE, "spec": {**LIVE["spec"], "mode": "global"}}
    with pytest.raises(errors.CliError, match="is global"):
        update(live, "--replicas 3 web")


def test_init_capabilities_sysctls_and_ulimits_flags() -> None:
    t = create("--init --cap-add net_admin --cap-add CAP_SYS_TIME --cap-drop ALL "
               "--sysctl net.core.somaxconn=1024 --ulimit nofile=1024:2048 --ulimit nproc=64 "
               "img")["spec"]["template"]
    assert t["init"] is True
    assert (t["capAdd"], t["capDrop"]) == (["CAP_NET_ADMIN", "CAP_SYS_TIME"], ["ALL"])
    assert t["sysctls"] == {"net.core.somaxconn": "1024"}
    assert t["ulimits"] == {"nofile": {"soft": 1024, "hard": 2048},
                            "nproc": {"soft": 64, "hard": 64}}
    live = {**LIVE, "spec": {**LIVE["spec"], "template": t}}
    # As docker: a capability added comes off the dropped list and the other way round.
    t2 = update(live, "--no-init --cap-drop sys_time --cap-add RESET --cap-add chown "
                      "--sysctl-rm net.core.somaxconn --sysctl-add kernel.shmmax=4096 "
                      "--ulimit-rm nproc --ulimit-add nofile=-1 web")["spec"]["template"]
    assert t2["init"] is False
    assert (t2["capAdd"], t2["capDrop"]) == (["CAP_CHOWN"], ["ALL"])
    assert t2["sysctls"] == {"kernel.shmmax": "4096"}
    assert t2["ulimits"] == {"nofile": {"soft": -1, "hard": -1}}
    t3 = update(live, "--cap-drop RESET --sysctl-rm net.core.somaxconn web")["spec"]["template"]
    assert "capDrop" not in t3 and "sysctls" not in t3
    args = build_parser().parse_args(["service", "update", "--rollback", "--no-init", "web"])
    with pytest.raises(errors.CliError, match="--rollback cannot be combined with --no-init"):
        serviceflags.refuse_mixed_rollback(args)
    with pytest.raises(errors.CliError, match='--ulimit "nofile=lots": expected NAME=SOFT'):
        create("--ulimit nofile=lots img")
    with pytest.raises(errors.CliError, match='--ulimit-rm "core": the service has no '
                                              "resource limit core"):
        update(live, "--ulimit-rm core web")


def test_network_long_syntax_gives_aliases_and_edits_by_name() -> None:
    doc = create("--network a --network name=b,alias=db,alias=store --network a x")
    assert doc["spec"]["networks"] == ["a", {"name": "b", "aliases": ["db", "store"]}]
    live = {**LIVE, "spec": {**LIVE["spec"], "networks": doc["spec"]["networks"]}}
    spec = update(live, "--network-rm b --network-add name=b,alias=cache web")["spec"]
    assert spec["networks"] == ["a", {"name": "b", "aliases": ["cache"]}]
    for line, message in (
            ("--network-add name=a,alias=x web", 'already has network a'),
            ("--network-add name=c,driver-opt=x=1 web", '"driver-opt=x=1" is not one of'),
            ("--network-add alias=x web", "name= is required"),
            ("--network-rm z web", '--network-rm "z": the service has no such network '
                                   "(it has: a, b)")):
        with pytest.raises(errors.CliError) as caught:
            update(live, line)
        assert message in str(caught.value), line


def test_default_name_says_what_runs() -> None:
    assert serviceflags.default_name("registry:5000/shoal/busybox:1.0@sha256:ab", "3fa9c") \
        == "busybox-3fa9c"


def test_rollback_takes_no_other_change() -> None:
    args = build_parser().parse_args(["service", "update", "--rollback", "-d", "web"])
    serviceflags.refuse_mixed_rollback(args)  # -d is how to wait, not a change
    args = build_parser().parse_args(["service", "update", "--rollback", "--image", "x",
                                      "--env-add", "A=1", "web"])
    with pytest.raises(errors.CliError) as caught:
        serviceflags.refuse_mixed_rollback(args)
    assert str(caught.value).startswith("--rollback cannot be combined with --env-add, "
                                        "--image: ")


def test_secret_and_config_flags_as_docker_reads_them() -> None:
    t = create("--secret db --secret src=tls,target=tls.key,uid=70,gid=70,mode=0400 "
               "--config source=site,target=/etc/site.conf,mode=292 img")["spec"]["template"]
    assert t["secrets"] == [{"source": "db"}, {"source": "tls", "target": "tls.key",
                                               "uid": "70", "gid": "70", "mode": 0o400}]
    assert t["configs"] == [{"source": "site", "target": "/etc/site.conf", "mode": 0o444}]
    live = {**LIVE, "spec": {**LIVE["spec"], "template": t}}
    t2 = update(live, "--secret-rm tls --secret-add pw --config-rm site web")["spec"]["template"]
    assert t2["secrets"] == [{"source": "db"}, {"source": "pw"}] and "configs" not in t2
    with pytest.raises(errors.CliError, match='--secret-rm "nope": the service has no such '
                                              r"secret \(it has: db, tls\)"):
        update(live, "--secret-rm nope web")
    with pytest.raises(errors.CliError, match='--config "target=/x": source=NAME is required'):
        create("--config target=/x img")
    with pytest.raises(errors.CliError, match="mode 0999 is not a number"):
        create("--secret source=db,mode=0999 img")
