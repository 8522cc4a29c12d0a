"""Loading compose files as Docker 20.10's stack loader does: versions, keys per version,
anchors and extensions, .env and env_file, typed values, merging, warnings and refusals."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.compose import ComposeError, ComposeProject, load_project


def write(tmp_path: Path, body: Any, name: str = "stack.yml") -> Path:
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


def load(tmp_path: Path, body: Any, env: dict[str, str] | None = None) -> ComposeProject:
    return load_project([write(tmp_path, body)], env or {})


def test_a_file_without_version_is_refused_as_version_1(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"stack.yml: unsupported Compose file version: 1.0"):
        load(tmp_path, {"services": {"web": {"image": "nginx"}}})


@pytest.mark.parametrize("version", ["2.4", "3.10", "4"])
def test_versions_other_than_3x_are_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(ComposeError, match=f"unsupported Compose file version: {version}"):
        load(tmp_path, {"version": version, "services": {}})


@pytest.mark.parametrize("version", ["3", "3.0", "3.9", 3.4])
def test_versions_3x_load(tmp_path: Path, version: object) -> None:
    assert load(tmp_path, {"version": version, "services": {"w": {"image": "a"}}}).services


def test_an_unknown_key_is_refused_naming_service_and_key(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"stack.yml: services.web.deploy Additional property "
                       r"replica is not allowed"):
        load(tmp_path, {"version": "3.8", "services": {"web": {
            "image": "a", "deploy": {"replica": 2}}}})


def test_a_key_newer_than_the_files_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"rollback_config is not allowed \(it needs "
                       r"version 3.7 or later\)"):
        load(tmp_path, {"version": "3.3", "services": {"web": {
            "image": "a", "deploy": {"rollback_config": {"parallelism": 2}}}}})


def test_network_typo_is_refused_as_docker_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"networks.net Additional property driver-opts"):
        load(tmp_path, {"version": "3.8", "services": {"w": {"image": "a"}},
                        "networks": {"net": {"driver-opts": {"x": "y"}}}})


def test_extends_is_refused_before_anything_else(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"unsupported options: extends .*not implemented"):
        load(tmp_path, {"services": {"w": {"image": "a", "extends": {"service": "b"}}}})


def test_deploy_labels_as_a_list_of_mappings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.w.deploy.labels must be a mapping"):
        load(tmp_path, {"version": "3.7", "services": {"w": {
            "image": "a", "deploy": {"labels": [{"a": "b"}]}}}})


def test_extension_fields_anchors_and_merge_keys(tmp_path: Path) -> None:
    project = load(tmp_path, """
version: "3.7"
x-common: &common
  image: busybox
  environment: {A: "1"}
services:
  web:
    <<: *common
    x-note: ignored
    command: ["sleep", "1"]
""")
    assert project.services["web"] == {"image": "busybox", "environment": {"A": "1"},
                                       "command": ["sleep", "1"]}


def test_extension_fields_need_version_3_4_at_the_top(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"Additional property x-a is not allowed"):
        load(tmp_path, {"version": "3.3", "x-a": 1, "services": {}})


def test_environment_and_dotenv_feed_interpolation_and_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# comment\nTAG=from-dotenv\nREPL=2\n")
    project = load(tmp_path, {"version": "3.8", "services": {"w": {
        "image": "a:${TAG}", "deploy": {"replicas": "${REPL}"}}}}, {"TAG": "from-env"})
    assert project.services["w"]["image"] == "a:from-env"
    assert project.services["w"]["deploy"]["replicas"] == 2


def test_a_typed_value_that_is_not_a_number_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.w.deploy.replicas: failed to cast 'x'"):
        load(tmp_path, {"version": "3.8", "services": {"w": {
            "image": "a", "deploy": {"replicas": "${N}"}}}}, {"N": "x"})


def test_env_file_values_come_first_and_environment_overrides(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("A=from-file\nB=from-file\n# c\n\nFROM_ENV\n")
    project = load(tmp_path, {"version": "3.8", "services": {"w": {
        "image": "a", "env_file": "app.env", "environment": ["B=override"]}}},
        {"FROM_ENV": "host"})
    assert project.services["w"]["environment"] == {
        "A": "from-file", "B": "override", "FROM_ENV": "host"}


def test_a_missing_env_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"services.w.env_file: cannot read .*nope.env"):
        load(tmp_path, {"version": "3.8", "services": {"w": {"image": "a",
                                                               "env_file": ["nope.env"]}}})


def test_several_files_merge_like_docker(tmp_path: Path) -> None:
    (tmp_path / "over.env").write_text("A=from-override-env-file\n")
    base = write(tmp_path, {"version": "3.8", "services": {"web": {
        "image": "a:1", "environment": {"A": "1", "B": "1"}, "ports": ["80:80", "8080:80"],
        "command": ["serve"], "cap_add": ["NET_ADMIN"], "volumes": ["d:/data", "/cache"],
        "deploy": {"replicas": 2, "labels": {"x": "1"},
                   "placement": {"constraints": ["node.role==manager"]}}}},
        "networks": {"front": {"attachable": True, "driver": "overlay"}}}, "base.yml")
    over = write(tmp_path, {"version": "3.8", "services": {"web": {
        "image": "a:2", "env_file": "over.env", "environment": ["B=2"],
        "ports": [{"target": 81, "published": 8080}, "443:443"], "command": "run",
        "cap_add": ["SYS_ADMIN"], "volumes": ["e:/data"],
        "deploy": {"labels": ["y=2"], "placement": {"constraints": ["node.os==linux"]}}},
        "db": {"image": "pg"}}, "networks": {"front": {"internal": True}}}, "over.yml")
    project = load_project([base, over], {})
    web = project.services["web"]
    assert web["image"] == "a:2"
    # env_file is read per file: the override's env_file beats the base's environment.
    assert web["environment"] == {"A": "from-override-env-file", "B": "2"}
    assert web["ports"] == ["80:80", "443:443", {"target": 81, "published": 8080}]
    assert web["command"] == "run"
    assert web["cap_add"] == ["NET_ADMIN", "SYS_ADMIN"]
    assert web["volumes"] == ["e:/data", "/cache"]
    assert web["deploy"] == {"replicas": 2, "labels": {"x": "1", "y": "2"}, "placement": {
        "constraints": ["node.role==manager", "node.os==linux"]}}
    assert set(project.services) == {"web", "db"}
    # Top-level objects are replaced whole.
    assert project.networks == {"front": {"internal": True}}


def test_files_of_different_versions_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path, {"version": "3.8", "services": {}}, "a.yml")
    b = write(tmp_path, {"version": "3.7", "services": {}}, "b.yml")
    with pytest.raises(ComposeError, match=r"version mismatched"):
        load_project([a, b], {})


def test_unsupported_and_deprecated_options_are_reported_as_docker_does(tmp_path: Path) -> None:
    project = load(tmp_path, {"version": "3.8", "services": {"w": {
        "image": "a", "build": ".", "restart": "always", "container_name": "x"}}})
    assert project.warnings[0] == "Ignoring unsupported options: build, restart"
    assert project.warnings[1].startswith("Ignoring deprecated options:\n\ncontainer_name: ")


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"missing.yml: cannot read the compose file"):
        load_project([tmp_path / "missing.yml"], {})


@pytest.mark.parametrize(("deploy", "message"), [
    ({"resources": {"limits": {"cpus": 0.5}}},
     r"services.w.deploy.resources.limits.cpus must be a string \(quote it"),
    ({"update_config": {"delay": "10"}}, r"services.w.deploy.update_config.delay must be a "
     r"duration string"),
    ({"restart_policy": {"window": 30}}, r"restart_policy.window must be a duration"),
])
def test_scalars_of_the_wrong_type_are_refused_as_docker_refuses_them(
    tmp_path: Path, deploy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ComposeError, match=message):
        load(tmp_path, {"version": "3.8", "services": {"w": {"image": "a", "deploy": deploy}}})


@pytest.mark.parametrize("duration", ["0", "10s", "1m30s", "1.5h", "500ms", "2h45m"])
def test_go_durations_are_accepted(tmp_path: Path, duration: str) -> None:
    load(tmp_path, {"version": "3.8", "services": {"w": {"image": "a",
                                                          "stop_grace_period": duration}}})


def test_runaway_nesting_and_alias_loops_are_refused_naming_the_file(tmp_path: Path) -> None:
    """Fuzzing found it: a compose file nested a few thousand levels deep ended in a
    RecursionError (an internal error), and one whose alias contains itself recursed."""
    deep = tmp_path / "deep.yml"
    deep.write_text("version: '3.8'\nservices:\n  web:\n    image: busybox\n"
                    "    environment: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ComposeError, match="nested more than 64 levels") as err:
        load_project([deep], {})
    assert str(err.value).startswith(f"{deep}: ")
    loop = tmp_path / "loop.yml"
    loop.write_text("version: '3.8'\nservices:\n  web: &w\n    image: busybox\n"
                    "    labels: *w\n")
    with pytest.raises(ComposeError, match="contains itself"):
        load_project([loop], {})
