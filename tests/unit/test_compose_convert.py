"""Compose services as Shoal manifests: names and labels per stack, and each field's mapping."""

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.compose import ComposeError, convert_stack, load_project


def convert(tmp_path: Path, body: dict[str, Any], stack: str = "web") -> list[dict[str, Any]]:
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": "3.8", **body}))
    return convert_stack(load_project([path], {"HOME": "/root"}), stack)


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def test_a_minimal_service_gets_the_stack_name_labels_and_default_network(tmp_path: Path) -> None:
    objs = by_name(convert(tmp_path, {"services": {"app": {"image": "nginx"}}}))
    assert set(objs) == {"Network/web_default", "Service/web_app"}
    svc = objs["Service/web_app"]
    assert svc["metadata"] == {"name": "web_app", "namespace": "web", "labels": {
        "com.docker.stack.namespace": "web", "com.docker.stack.image": "nginx"}}
    assert svc["spec"]["template"]["image"] == "nginx:latest"
    assert svc["spec"]["template"]["labels"] == {"com.docker.stack.namespace": "web"}
    # Its compose key is its alias there, so the stack's other services find it by it.
    assert svc["spec"]["networks"] == [{"name": "web_default", "aliases": ["app"]}]
    assert svc["spec"]["mode"] == "replicated" and svc["spec"]["replicas"] == 1
    net = objs["Network/web_default"]
    assert net["metadata"] == {"name": "web_default",
                               "labels": {"com.docker.stack.namespace": "web"}}
    assert net["spec"] == {"driver": "overlay"}


def test_entrypoint_command_env_and_the_simple_fields(tmp_path: Path) -> None:
    svc = by_name(convert(tmp_path, {"services": {"app": {
        "image": "registry:5000/app", "entrypoint": "/bin/sh -c", "command": ["echo", "hi"],
        "environment": {"A": 1, "B": True, "C": None}, "working_dir": "/srv", "user": "1000",
        "hostname": "h", "labels": ["tier=front"], "stop_grace_period": "1m30s",
        "stop_signal": "SIGINT"}}}))["Service/web_app"]
    t = svc["spec"]["template"]
    assert t["image"] == "registry:5000/app:latest"
    assert t["entrypoint"] == ["/bin/sh", "-c"] and t["command"] == ["echo", "hi"]
    assert t["env"] == {"A": "1", "B": "true"}
    assert (t["workdir"], t["user"], t["hostname"]) == ("/srv", "1000", "h")
    assert t["labels"] == {"tier": "front", "com.docker.stack.namespace": "web"}
    assert t["stopGracePeriod"] == "1m30s" and t["stopSignal"] == "SIGINT"


def test_deploy_maps_to_mode_placement_policies_resources_and_labels(tmp_path: Path) -> None:
    spec = by_name(convert(tmp_path, {"services": {"app": {"image": "a:1", "deploy": {
        "replicas": 3, "endpoint_mode": "dnsrr", "labels": {"traefik.enable": "true"},
        "placement": {"constraints": ["node.role == manager"],
                      "preferences": [{"spread": "node.labels.zone"}],
                      "max_replicas_per_node": 2},
        "restart_policy": {"condition": "on-failure", "delay": "10s", "max_attempts": 3,
                           "window": "2m"},
        "update_config": {"parallelism": 2, "delay": "10s", "failure_action": "rollback",
                          "monitor": "30s", "max_failure_ratio": 0.3, "order": "start-first"},
        "rollback_config": {"parallelism": 0, "order": "stop-first"},
        "resources": {"limits": {"cpus": "0.5", "memory": "512M"},
                      "reservations": {"memory": "1G"}}}}}}))["Service/web_app"]["spec"]
    assert spec["replicas"] == 3 and spec["endpoint"] == {"mode": "dnsrr"}
    assert spec["placement"] == {"constraints": ["node.role == manager"],
                                 "preferences": [{"spread": "node.labels.zone"}],
                                 "maxReplicasPerNode": 2}
    assert spec["restartPolicy"] == {"condition": "on-failure", "delay": "10s",
                                     "maxAttempts": 3, "window": "2m"}
    assert spec["updateConfig"] == {"parallelism": 2, "delay": "10s", "failureAction":
                                    "rollback", "monitor": "30s", "maxFailureRatio": 0.3,
                                    "order": "start-first"}
    assert spec["rollbackConfig"] == {"parallelism": 0, "order": "stop-first"}
    assert spec["template"]["resources"] == {"limits": {"cpus": 0.5, "memory": 512 << 20},
                                             "reservations": {"memory": 1 << 30}}


def test_global_mode_has_no_replicas(tmp_path: Path) -> None:
    spec = by_name(convert(tmp_path, {"services": {"app": {
        "image": "a", "deploy": {"mode": "global"}}}}))["Service/web_app"]["spec"]
    assert spec["mode"] == "global" and "replicas" not in spec


@pytest.mark.parametrize(("restart", "want"), [
    ("always", {"condition": "any"}), ("unless-stopped", {"condition": "any"}),
    ("on-failure:4", {"condition": "on-failure", "maxAttempts": 4}), ("no", None)])
def test_restart_is_the_fallback_restart_policy(tmp_path: Path, restart: str,
                                                want: dict[str, Any] | None) -> None:
    spec = by_name(convert(tmp_path, {"services": {"app": {
        "image": "a", "restart": restart}}}))["Service/web_app"]["spec"]
    assert spec.get("restartPolicy") == want


def test_ports_short_long_ranges_and_host_ip(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": "3.8", "services": {"app": {
        "image": "a", "ports": ["80", "8080:80", "127.0.0.1:53:53/udp", "9000-9001:9000-9001",
                                {"target": 22, "published": 2222, "mode": "host"}]}}}))
    project = load_project([path], {})
    spec = by_name(convert_stack(project, "web"))["Service/web_app"]["spec"]
    assert spec["endpoint"]["ports"] == [
        {"target": 80, "protocol": "tcp", "mode": "ingress"},
        {"target": 53, "published": 53, "protocol": "udp", "mode": "ingress"},
        {"target": 22, "published": 2222, "protocol": "tcp", "mode": "host"},
        {"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"},
        {"target": 9000, "published": 9000, "protocol": "tcp", "mode": "ingress"},
        {"target": 9001, "published": 9001, "protocol": "tcp", "mode": "ingress"}]
    assert "ignoring IP-address (127.0.0.1:53:53/udp)" in project.warnings[0]


def test_networks_named_external_and_declared(tmp_path: Path) -> None:
    objs = by_name(convert(tmp_path, {
        "services": {"app": {"image": "a", "networks": {"front": {"aliases": ["x"]},
                                                        "proxy": None, "back": None}}},
        "networks": {"front": {"attachable": True, "ipam": {"config": [{"subnet":
                                                                       "10.9.0.0/24"}]}},
                     "proxy": {"external": True}, "back": {"name": "shared-back"}}}))
    # The file's aliases first, then the compose key, as Docker gives them.
    assert objs["Service/web_app"]["spec"]["networks"] == [
        {"name": "proxy", "aliases": ["app"]}, {"name": "shared-back", "aliases": ["app"]},
        {"name": "web_front", "aliases": ["x", "app"]}]
    assert objs["Network/web_front"]["spec"] == {"driver": "overlay", "attachable": True,
                                                 "subnet": "10.9.0.0/24"}
    assert "Network/shared-back" in objs and "Network/proxy" not in objs


def test_a_bridge_network_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"stack.yml: networks.n.driver: bridge networks "
                       "cannot be used by swarm services"):
        convert(tmp_path, {"services": {"app": {"image": "a", "networks": ["n"]}},
                           "networks": {"n": {"driver": "bridge"}}})


def test_an_undeclared_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r'service network "n" is not declared'):
        convert(tmp_path, {"services": {"app": {"image": "a", "networks": ["n"]}}})


def test_mounts_named_bind_anonymous_and_tmpfs(tmp_path: Path) -> None:
    t = by_name(convert(tmp_path, {
        "services": {"app": {"image": "a", "volumes": [{"type": "tmpfs", "target": "/run"},
            "data:/var/lib/data", "./conf:/etc/conf:ro", "~/x:/x", "/cache",
            {"type": "bind", "source": "/srv", "target": "/srv", "read_only": True}]}},
        "volumes": {"data": None}}))["Service/web_app"]["spec"]["template"]
    assert t["mounts"] == [
        {"type": "tmpfs", "target": "/run"},
        {"type": "volume", "target": "/var/lib/data", "source": "web_data"},
        {"type": "bind", "target": "/etc/conf", "source": str(tmp_path / "conf"),
         "readOnly": True},
        {"type": "bind", "target": "/x", "source": "/root/x"},
        {"type": "volume", "target": "/cache"},
        {"type": "bind", "target": "/srv", "source": "/srv", "readOnly": True}]


def test_an_undefined_volume_is_refused_naming_the_service(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r'services.app.volumes: undefined volume "data"'):
        convert(tmp_path, {"services": {"app": {"image": "a", "volumes": ["data:/d"]}}})


def test_secrets_and_configs_from_files_external_and_named(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_bytes(b"s3cret\n")
    (tmp_path / "app.conf").write_text("a = 1\n")
    objs = by_name(convert(tmp_path, {
        "services": {"app": {"image": "a", "secrets": [
            "pw", {"source": "ext", "target": "k", "uid": "1000", "gid": "1000", "mode": 0o400}],
                             "configs": ["conf", {"source": "named", "target": "etc/n",
                                                  "mode": 0o555}]}},
        "secrets": {"pw": {"file": "./pw.txt"}, "ext": {"external": True}},
        "configs": {"conf": {"file": "app.conf"},
                    "named": {"name": "global-conf", "file": "app.conf"}}}))
    t = objs["Service/web_app"]["spec"]["template"]
    assert t["secrets"] == [{"source": "ext", "target": "k", "uid": "1000", "gid": "1000",
                             "mode": 0o400},
                            {"source": "web_pw", "target": "pw"}]
    # A relative config target is where Docker puts it: at the root.
    assert t["configs"] == [{"source": "global-conf", "target": "/etc/n", "mode": 0o555},
                            {"source": "web_conf", "target": "/conf"}]
    secret = objs["Secret/web_pw"]
    assert base64.b64decode(secret["spec"]["data"]) == b"s3cret\n"
    assert secret["metadata"]["namespace"] == "web"
    assert objs["Config/web_conf"]["spec"] == {"data": "a = 1\n"}
    assert "Config/global-conf" in objs and "Secret/ext" not in objs


def test_a_secret_file_that_cannot_be_read_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"secrets.pw.file: open /nonexistent/pw"):
        convert(tmp_path, {"services": {"app": {"image": "a", "secrets": ["pw"]}},
                           "secrets": {"pw": {"file": "/nonexistent/pw"}}})


def test_an_undefined_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r'services.app.secrets: undefined secret "pw"'):
        convert(tmp_path, {"services": {"app": {"image": "a", "secrets": ["pw"]}}})


def test_healthcheck_forms(tmp_path: Path) -> None:
    objs = by_name(convert(tmp_path, {"services": {
        "a": {"image": "a", "healthcheck": {"test": "curl -f localhost", "interval": "5s",
                                            "timeout": "1s", "retries": 3,
                                            "start_period": "10s"}},
        "b": {"image": "b", "healthcheck": {"disable": True}}}}))
    assert objs["Service/web_a"]["spec"]["template"]["healthcheck"] == {
        "test": ["CMD-SHELL", "curl -f localhost"], "interval": "5s", "timeout": "1s",
        "startPeriod": "10s", "retries": 3}
    assert objs["Service/web_b"]["spec"]["template"]["healthcheck"] == {"test": ["NONE"]}


def test_a_service_without_image_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.app.image: an image reference must be"):
        convert(tmp_path, {"services": {"app": {"command": "true"}}})


@pytest.mark.parametrize(("key", "value"), [
    ("ports", "80:80"), ("environment", 5), ("command", 5), ("networks", "front"),
    ("deploy", ["replicas"]), ("image", ["a"]), ("volumes", {"a": "/a"}),
])
def test_a_value_of_the_wrong_shape_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: Any
) -> None:
    service = {"image": "a", key: value}
    with pytest.raises(ComposeError, match=rf"stack.yml: services.app.{key} must be "):
        convert(tmp_path, {"services": {"app": service}})


@pytest.mark.parametrize("deploy", [
    {"placement": {"preferences": ["spread"]}}, {"resources": {"limits": {"memory": "lots"}}},
    {"update_config": {"parallelism": "two"}}, {"replicas": "many"},
])
def test_a_bad_deploy_value_is_refused_not_crashed_on(tmp_path: Path,
                                                      deploy: dict[str, Any]) -> None:
    with pytest.raises(ComposeError, match=r"stack.yml: services.app"):
        convert(tmp_path, {"services": {"app": {"image": "a", "deploy": deploy}}})


def test_what_shoal_cannot_carry_yet_is_reported_in_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": "3.8", "services": {"app": {
        "image": "a", "tty": True, "dns": ["1.1.1.1"],
        "networks": {"n": {"aliases": ["x"]}}, "secrets": [{"source": "s", "mode": 0o400}]}},
        "networks": {"n": None}, "secrets": {"s": {"external": True}}}))
    project = load_project([path], {})
    convert_stack(project, "web")
    assert project.warnings == ["Not carried to Shoal yet (accepted, no effect): dns, "
                                "tty"]


def test_init_capabilities_sysctls_and_ulimits_as_docker_converts_them(
        tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": "3.9", "services": {
        "app": {"image": "a", "init": True, "cap_add": ["net_admin", "SYS_TIME", "CHOWN"],
                "cap_drop": ["ALL", "CAP_CHOWN"], "sysctls": ["net.core.somaxconn=1024"],
                "ulimits": {"nproc": 65535, "nofile": {"soft": "${SOFT}", "hard": 40000}}},
        "db": {"image": "b", "init": False, "sysctls": {"kernel.shmmax": 65536}}}}))
    project = load_project([path], {"SOFT": "20000"})
    objs = by_name(convert_stack(project, "web"))
    app = objs["Service/web_app"]["spec"]["template"]
    assert app["init"] is True
    # Normalised and sorted; CHOWN both added and dropped is added (Docker's rule).
    assert app["capAdd"] == ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert app["capDrop"] == ["ALL"]
    assert app["sysctls"] == {"net.core.somaxconn": "1024"}
    assert app["ulimits"] == {"nproc": {"soft": 65535, "hard": 65535},
                              "nofile": {"soft": 20000, "hard": 40000}}
    db = objs["Service/web_db"]["spec"]["template"]
    assert db["init"] is False and db["sysctls"] == {"kernel.shmmax": "65536"}
    assert "capAdd" not in db and "ulimits" not in db
    assert project.warnings == []


@pytest.mark.parametrize(("service", "message"), [
    ({"init": "yes"}, "services.app.init must be a boolean"),
    ({"cap_add": "NET_ADMIN"}, "services.app.cap_add must be a list"),
    ({"cap_drop": [1]}, "services.app.cap_drop must be a list of strings"),
    ({"ulimits": {"nofile": {"soft": 1}}}, "services.app.ulimits.nofile must be an integer "
                                           "or a mapping with soft and hard"),
    ({"ulimits": {"nofile": "lots"}}, "services.app.ulimits.nofile"),
])
def test_a_bad_process_setting_is_refused_naming_its_key(
        tmp_path: Path, service: dict[str, Any], message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        convert(tmp_path, {"services": {"app": {"image": "a", **service}}})




def test_network_driver_opts_encrypted_is_refused_the_rest_warned_labels_kept(
        tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": "3.8", "services": {"app": {
        "image": "a", "networks": ["n"]}}, "networks": {"n": {
            "labels": {"tier": "back"}, "driver_opts": {
                "encrypted": "true", "com.docker.network.driver.mtu": "1400"}}}}))
    with pytest.raises(ComposeError, match=r"stack.yml: networks.n.driver_opts.encrypted: "
                       "Shoal does not encrypt overlay traffic yet .*remove the option"):
        convert_stack(load_project([path], {}), "web")
    project = load_project([path], {})
    net = by_name(convert_stack(project, "web", allow_unencrypted=True))["Network/web_n"]
    assert net["spec"] == {"driver": "overlay"}
    assert net["metadata"]["labels"] == {"tier": "back", "com.docker.stack.namespace": "web"}
    assert [w.split(":")[0] for w in project.warnings] == [
        "Ignoring networks.n.driver_opts.com.docker.network.driver.mtu",
        "Ignoring networks.n.driver_opts.encrypted"]
    assert "VXLAN traffic is plain text" in project.warnings[1]


def test_healthcheck_test_and_disable_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.app.healthcheck: test and disable"):
        convert(tmp_path, {"services": {"app": {"image": "a", "healthcheck": {
            "test": "true", "disable": True}}}})


def test_a_secret_target_used_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.app.secrets: duplicate target x"):
        convert(tmp_path, {"services": {"app": {"image": "a", "secrets": [
            {"source": "a", "target": "x"}, {"source": "b", "target": "x"}]}},
            "secrets": {"a": {"external": True}, "b": {"external": True}}})


def test_replicas_with_global_mode_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.app.deploy.replicas can only be used"):
        convert(tmp_path, {"services": {"app": {"image": "a", "deploy": {
            "mode": "global", "replicas": 2}}}})


def test_dnsrr_with_an_ingress_published_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"ingress mode can't be used with endpoint_mode"):
        convert(tmp_path, {"services": {"app": {"image": "a", "ports": ["80:80"],
                                                "deploy": {"endpoint_mode": "dnsrr"}}}})


@pytest.mark.parametrize(("ref", "message"), [
    ({"source": "s", "uid": 1000}, r"services.app.secrets.0.uid must be a string"),
    ({"source": "s", "mode": [4]}, r"services.app.secrets.0.mode must be a number"),
])
def test_secret_owner_and_mode_take_the_types_docker_s_schema_gives(
        tmp_path: Path, ref: dict[str, Any], message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        convert(tmp_path, {"services": {"app": {"image": "a", "secrets": [ref]}},
                           "secrets": {"s": {"external": True}}})
