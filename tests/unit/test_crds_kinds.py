"""The kind registry as built from the shipped CRD documents, and user kinds added to it."""

from __future__ import annotations

import importlib.resources
from typing import Any

import pytest
import yaml

from shoal.crds import kinds, openapi, semantics


def _shipped_crds() -> list[dict[str, Any]]:
    folder = importlib.resources.files("shoal.crds") / "schemas"
    return [yaml.safe_load(entry.read_text(encoding="utf-8"))
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")]


def test_builtin_kinds_and_scopes() -> None:
    registry = kinds.Registry.builtin()
    scopes = {info.kind: info.namespaced for info in registry.all()}
    assert scopes == {
        "Service": True, "Task": True, "Secret": True, "Config": True, "Event": True,
        "Node": False, "Network": False, "CustomResourceDefinition": False,
    }
    assert all(info.builtin and info.api_version == "shoal.io/v1" for info in registry.all())


@pytest.mark.parametrize(("name", "kind"), [
    ("svc", "Service"), ("service", "Service"), ("services", "Service"), ("Service", "Service"),
    ("no", "Node"), ("node", "Node"), ("nodes", "Node"),
    ("crd", "CustomResourceDefinition"), ("crds", "CustomResourceDefinition"),
    ("customresourcedefinitions", "CustomResourceDefinition"),
    ("tsk", "Task"), ("tasks", "Task"), ("net", "Network"), ("cfg", "Config"),
    ("secret", "Secret"), ("SVC", "Service"),
])
def test_lookup_by_any_name(name: str, kind: str) -> None:
    assert kinds.Registry.builtin().lookup(name).kind == kind


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(kinds.UnknownKindError) as err:
        kinds.Registry.builtin().lookup("widgets")
    assert 'unknown kind "widgets"' in str(err.value)
    assert "services" in str(err.value)


def test_shipped_crds_are_valid_crds() -> None:
    """Every shipped schema passes the checks a user's CRD would (defaults fit, names...)."""
    crd_schema = kinds.Registry.builtin().by_kind(kinds.CRD_KIND).schema
    documents = _shipped_crds()
    assert len(documents) == 8
    for doc in documents:
        assert doc["apiVersion"] == "shoal.io/v1" and doc["kind"] == kinds.CRD_KIND
        errors = openapi.validate(doc["spec"], crd_schema["properties"]["spec"], "spec")
        errors += semantics.SEMANTIC_CHECKS[kinds.CRD_KIND](doc)
        assert errors == [], doc["metadata"]["name"]


def test_printer_columns_are_loaded() -> None:
    service = kinds.Registry.builtin().lookup("svc")
    assert [c["name"] for c in service.printer_columns] == ["Mode", "Replicas", "Image", "Update",
                                                           "Revision", "Error", "Age"]


def test_user_kind_from_crd() -> None:
    crd = {
        "apiVersion": "shoal.io/v1", "kind": kinds.CRD_KIND,
        "metadata": {"name": "websites.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
                 "names": {"kind": "Website", "plural": "websites", "shortNames": ["ws"]},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object"}}}]},
    }
    registry = kinds.Registry.builtin()
    registry.add(kinds.kind_info_from_crd(crd))
    info = registry.lookup("ws")
    assert (info.kind, info.plural, info.singular) == ("Website", "websites", "website")
    assert info.api_version == "example.com/v1" and not info.namespaced and not info.builtin


def test_builtin_kind_cannot_be_redefined() -> None:
    crd = {"spec": {"group": "shoal.io", "names": {"kind": "Service", "plural": "services"},
                    "versions": [{"name": "v1", "storage": True}]}}
    with pytest.raises(ValueError, match="built in"):
        kinds.Registry.builtin().add(kinds.kind_info_from_crd(crd))
