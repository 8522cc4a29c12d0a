"""The kind registry: which kinds exist, what they are called, and their schemas.

Built-in kinds are described by CustomResourceDefinition documents shipped in
``schemas/`` — the same apiextensions shape users apply for their own kinds — so the
framework serves built-in and user-defined kinds through one code path.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Iterable
from typing import Any

import yaml

from shoal.crds import resource

CRD_KIND = "CustomResourceDefinition"


class UnknownKindError(LookupError):
    """A kind name that matches no registered kind; the message lists what would work."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        known_list = sorted(set(known))
        super().__init__(
            f'unknown kind "{name}": known kinds are {", ".join(known_list)} '
            f"(register your own with a CustomResourceDefinition)")


@dataclasses.dataclass(frozen=True)
class KindInfo:
    """Everything the store, CLI and validator need to know about one kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True
    group: str = "shoal.io"
    version: str = "v1"
    schema: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    builtin: bool = True
    printer_columns: tuple[dict[str, Any], ...] = dataclasses.field(default=(), hash=False,
                                                                    compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name ``swctl`` accepts for this kind, lower-cased."""
        return (self.kind.lower(), self.plural, self.singular, *self.short_names)


def kind_info_from_crd(crd: dict[str, Any], builtin: bool = False) -> KindInfo:
    """Read a CustomResourceDefinition document (apiextensions shape) into a KindInfo.

    The document must already have passed validation against the CRD schema; this picks
    the served storage version (or the first one) as the version Shoal serves.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = spec.get("versions") or []
    chosen: dict[str, Any] = {}
    for version in versions:
        if version.get("storage", False) or not chosen:
            chosen = version
    schema = ((chosen.get("schema") or {}).get("openAPIV3Schema")) or {}
    kind = str(names.get("kind", ""))
    plural = str(names.get("plural") or kind.lower() + "s")
    return KindInfo(
        kind=kind,
        plural=plural.lower(),
        singular=str(names.get("singular") or kind.lower()).lower(),
        short_names=tuple(str(s).lower() for s in names.get("shortNames") or ()),
        namespaced=str(spec.get("scope", "Namespaced")) == "Namespaced",
        group=str(spec.get("group", "shoal.io")),
        version=str(chosen.get("name", "v1")),
        schema=dict(schema),
        builtin=builtin,
        printer_columns=tuple(chosen.get("additionalPrinterColumns") or ()),
    )


class Registry:
    """Kinds by every name they answer to. Cheap to copy; the CLI builds one per run."""

    def __init__(self, kinds: Iterable[KindInfo] = ()) -> None:
        self._by_kind: dict[str, KindInfo] = {}
        self._by_name: dict[str, KindInfo] = {}
        for info in kinds:
            self.add(info)

    @classmethod
    def builtin(cls) -> Registry:
        """The built-in kinds, read from the CRD documents shipped with the package."""
        return cls(_builtin_kinds())

    def add(self, info: KindInfo) -> None:
        """Register ``info``; a name already owned by another kind is a ValueError."""
        for name in info.names:
            owner = self._by_name.get(name)
            if owner is not None and owner.kind != info.kind:
                raise ValueError(f'name "{name}" of kind {info.kind} is already used by kind '
                                 f"{owner.kind}; pick other names")
        old = self._by_kind.get(info.kind)
        if old is not None:
            if old.builtin and not info.builtin:
                raise ValueError(f"kind {info.kind} is built in and cannot be redefined")
            self.remove(info.kind)
        self._by_kind[info.kind] = info
        for name in info.names:
            self._by_name[name] = info

    def remove(self, kind: str) -> None:
        info = self._by_kind.pop(kind, None)
        if info is not None:
            for name in info.names:
                self._by_name.pop(name, None)

    def lookup(self, name: str) -> KindInfo:
        """Find a kind by kind name, plural, singular or short name (case-insensitive)."""
        info = self._by_name.get(name.lower())
        if info is None:
            raise UnknownKindError(name, (i.plural for i in self._by_kind.values()))
        return info

    def by_kind(self, kind: str) -> KindInfo:
        info = self._by_kind.get(kind)
        if info is None:
            return self.lookup(kind)
        return info

    def by_plural(self, plural: str) -> KindInfo | None:
        info = self._by_name.get(plural)
        return info if info is not None and info.plural == plural else None

    def all(self) -> list[KindInfo]:
        return list(self._by_kind.values())

    def copy(self) -> Registry:
        return Registry(self._by_kind.values())


_BUILTIN_CACHE: list[KindInfo] | None = None


def _builtin_kinds() -> list[KindInfo]:
    global _BUILTIN_CACHE
    if _BUILTIN_CACHE is None:
        kinds = []
        folder = importlib.resources.files("shoal.crds") / "schemas"
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".yaml"):
                doc = yaml.safe_load(entry.read_text(encoding="utf-8"))
                kinds.append(kind_info_from_crd(doc, builtin=True))
        _BUILTIN_CACHE = kinds
    return list(_BUILTIN_CACHE)


def new_object_for(info: KindInfo, name: str, namespace: str | None = None) -> resource.Resource:
    """An empty object of ``info``'s kind, namespaced or not as the kind requires."""
    ns = (namespace or resource.DEFAULT_NAMESPACE) if info.namespaced else None
    obj = resource.new(info.kind, name, ns)
    obj.apiVersion = info.api_version
    return obj
