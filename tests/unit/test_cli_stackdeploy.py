"""shoal/cli/stackdeploy.py: Docker's progress line per object, and where a stack's
manifest came from in error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli import apply, errors, stackdeploy
from shoal.crds import kinds, resource

REG = kinds.Registry.builtin()


def planned(kind: str, name: str, action: str) -> apply.Planned:
    info = REG.by_kind(kind)
    obj = resource.Resource(kind=kind, metadata=resource.ObjectMeta(
        name=name, namespace="web" if info.namespaced else None, uid="u-1"), spec={})
    doc = stackdeploy.StackDocument(source="web.yml", index=1, data={}, origin="x")
    return apply.Planned(apply.Admitted(doc, info, obj), None, obj, action)


def test_progress_lines_are_dockers_and_unchanged_objects_say_nothing() -> None:
    assert stackdeploy.progress_line(planned("Network", "web_default", apply.CREATED)) == (
        "Creating network web_default")
    assert stackdeploy.progress_line(planned("Service", "web_db", apply.CONFIGURED)) == (
        "Updating service web_db (id: u-1)")
    assert stackdeploy.progress_line(planned("Secret", "web_pw", apply.CONFIGURED)) == (
        "Updating secret web_pw")
    assert stackdeploy.progress_line(planned("Service", "web_db", apply.UNCHANGED)) is None


def test_manifests_name_the_compose_service_and_files(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      ) -> None:
    path = tmp_path / "web.yml"
    path.write_text('version: "3.7"\nservices:\n  db:\n    image: busybox\n'
                    "    build: .\n")
    docs = stackdeploy.load([str(path)], "web")
    assert [d.where for d in docs] == [f"network web_default from {path}",
                                       f"service db from {path}"]
    assert capsys.readouterr().err == "Ignoring unsupported options: build\n"

    path.write_text('version: "3.7"\nservices:\n  db:\n    image: [busybox]\n')
    with pytest.raises(errors.CliError) as caught:
        stackdeploy.load([str(path)], "web")
    assert caught.value.lines[0].startswith(f"{path}: services.db.image")
    assert caught.value.lines[-1].startswith("nothing was written")
