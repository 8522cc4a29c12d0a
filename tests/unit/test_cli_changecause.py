"""shoal/cli/changecause.py: the command line recorded as a service's change cause."""

from __future__ import annotations

from shoal.cli import changecause
from shoal.crds import updatemeta as um
from tests.unit.cli_support import service


def test_the_line_as_typed_without_global_flags() -> None:
    assert changecause.command_line(["apply", "-f", "web.yaml"]) == "swctl apply -f web.yaml"
    assert changecause.command_line(
        ["--etcd", "http://u:p@h:2379", "service", "update", "--image", "busybox:2",
         "--prefix=/x", "web", "--request-timeout", "3"]
    ) == "swctl service update --image busybox:2 web"
    assert changecause.command_line(["service", "update", "--env-add", "A=a b", "web"]) == (
        "swctl service update --env-add 'A=a b' web")


def test_mark_sets_the_annotation_only_with_a_cause() -> None:
    svc = service()
    changecause.mark(svc, None)
    assert um.CHANGE_CAUSE not in svc.metadata.annotations
    changecause.mark(svc, "swctl rollout restart service/web")
    assert svc.metadata.annotations[um.CHANGE_CAUSE] == "swctl rollout restart service/web"
