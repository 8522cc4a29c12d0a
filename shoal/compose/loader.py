"""Reading compose files: YAML (anchors, merge keys), version, interpolation, checks, merge.

``load_project`` turns one or more files into a ``ComposeProject`` of plain dicts, checked
the way Docker 20.10's stack loader checks them, so ``convert`` only maps fields. Each file
is interpolated on its own and then merged over the previous ones (services, networks,
volumes, secrets and configs by name), as ``docker stack deploy -c a -c b`` does. Relative
paths resolve against the first file's directory, Docker's working directory.
"""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from shoal.compose import schema
from shoal.compose.errors import ComposeError
from shoal.compose.interpolate import interpolate

_SECTIONS = ("services", "networks", "volumes", "secrets", "configs")
_SECTION_KEYS = {"networks": schema.NETWORK, "volumes": schema.VOLUME,
                 "secrets": schema.SECRET, "configs": schema.CONFIG}
# Lists merged by an identity rather than replaced when a later file names the service again.
_MERGE_LISTS_BY = {"ports": lambda p: str(p), "volumes": lambda v: _volume_target(v),
                   "secrets": lambda s: _source(s), "configs": lambda s: _source(s)}


@dataclasses.dataclass
class ComposeProject:
    """The merged, interpolated, checked content of the files, ready for ``convert``."""

    files: list[str]
    working_dir: Path
    env: dict[str, str]
    services: dict[str, dict[str, Any]]
    networks: dict[str, dict[str, Any]]
    volumes: dict[str, dict[str, Any]]
    secrets: dict[str, dict[str, Any]]
    configs: dict[str, dict[str, Any]]
    warnings: list[str]


def load_project(paths: list[str | Path], environ: Mapping[str, str]) -> ComposeProject:
    """Load and merge ``paths``; ``environ`` (plus a ``.env`` beside the first file, which
    ``environ`` overrides) feeds interpolation. Raises ``ComposeError`` on what Docker refuses."""
    if not paths:
        raise ComposeError("no compose file given; pass one with -c FILE")
    first = Path(paths[0])
    working_dir = first.resolve().parent
    env = dict(_read_env_file(working_dir / ".env", optional=True))
    env.update(environ)
    warnings: list[str] = []
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for path in paths:
        data = _load_one(Path(path), env, warnings)
        for section in _SECTIONS:
            for name, body in (data.get(section) or {}).items():
                old = merged[section].get(name)
                merged[section][name] = body if old is None else _merge(old, body)
    for name, service in merged["services"].items():
        _resolve_env_files(service, working_dir, env, name)
    ignored = sorted({k for s in merged["services"].values() for k in s
                      if k in schema.IGNORED_WARNED})
    if ignored:
        warnings.append("Ignoring unsupported options: " + ", ".join(ignored))
    return ComposeProject([str(p) for p in paths], working_dir, env, merged["services"],
                          merged["networks"], merged["volumes"], merged["secrets"],
                          merged["configs"], warnings)


def _load_one(path: Path, env: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ComposeError(f"cannot read the compose file: {exc.strerror}", str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ComposeError(f"not valid YAML: {exc}", str(path)) from exc
    if not isinstance(data, dict):
        raise ComposeError("top-level object must be a mapping", str(path))
    _check_version(data.get("version"), str(path))
    for key in data:
        if not isinstance(key, str) or (key not in schema.TOP_LEVEL and not key.startswith("x-")):
            raise ComposeError(f"Additional property {key} is not allowed (top level)", str(path))
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    for section in _SECTIONS:
        body = data.get(section)
        if body is not None and not isinstance(body, dict):
            raise ComposeError(f"{section} must be a mapping", str(path))
    try:
        data = {k: (interpolate(v, env, k, warnings.append) if k in _SECTIONS else v)
                for k, v in data.items()}
        _check(data)
    except ComposeError as exc:
        raise ComposeError(str(exc), str(path)) from exc
    return data


def _check_version(version: Any, file: str) -> None:
    text = "1.0" if version is None else str(version)
    major, _, minor = text.partition(".")
    if major != "3" or (minor and (not minor.isdigit() or int(minor) > 9)):
        raise ComposeError(f"unsupported Compose file version: {text}; "
                           'stack files need version: "3.x" (3.0 to 3.9)', file)


def _check(data: dict[str, Any]) -> None:
    for name, service in (data.get("services") or {}).items():
        where = f"services.{name}"
        if not isinstance(service, dict):
            raise ComposeError(f"{where} must be a mapping")
        for key in service:
            if key in schema.FORBIDDEN:
                raise ComposeError(f"Compose file contains unsupported options: {key} "
                                   f"(in {where}): {schema.FORBIDDEN[key]}")
        _keys(service, schema.SERVICE, where)
        deploy = service.get("deploy")
        if deploy is not None:
            _check_deploy(deploy, f"{where}.deploy")
        hc = service.get("healthcheck")
        if hc is not None:
            _keys(hc, schema.HEALTHCHECK, f"{where}.healthcheck")
    for section, keys in _SECTION_KEYS.items():
        for name, body in (data.get(section) or {}).items():
            if body is not None:
                _keys(body, keys, f"{section}.{name}")


def _check_deploy(deploy: Any, where: str) -> None:
    _keys(deploy, schema.DEPLOY, where)
    labels = deploy.get("labels")
    if isinstance(labels, list) and not all(isinstance(x, str) for x in labels):
        raise ComposeError(f"{where}.labels must be a mapping; write KEY: value or "
                           '"KEY=value" entries')
    for key, keys in (("update_config", schema.UPDATE), ("rollback_config", schema.UPDATE),
                      ("restart_policy", schema.RESTART), ("placement", schema.PLACEMENT),
                      ("resources", schema.RESOURCES)):
        if deploy.get(key) is not None:
            _keys(deploy[key], keys, f"{where}.{key}")
    for key in ("limits", "reservations"):
        body = (deploy.get("resources") or {}).get(key)
        if body is not None:
            _keys(body, schema.RESOURCE, f"{where}.resources.{key}")


def _keys(body: Any, allowed: frozenset[str], where: str) -> None:
    if not isinstance(body, dict):
        raise ComposeError(f"{where} must be a mapping")
    for key in body:
        if key not in allowed and not str(key).startswith("x-"):
            raise ComposeError(f"{where} Additional property {key} is not allowed")


def _merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base`` as Docker merges a later -c file onto an earlier one."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if key in _MERGE_LISTS_BY and isinstance(value, list) and isinstance(out.get(key), list):
                ident = _MERGE_LISTS_BY[key]
                by_id = {ident(x): x for x in out[key]}
                by_id.update({ident(x): x for x in value})
                out[key] = list(by_id.values())
            elif key in ("environment", "labels") and key in out:
                out[key] = {**_as_map(out[key]), **_as_map(value)}
            elif key in out:
                out[key] = _merge(out[key], value)
            else:
                out[key] = value
        return out
    return over


def _as_map(value: Any) -> dict[str, Any]:
    """A list-or-dict (``["A=1", "B"]`` or ``{A: 1, B: null}``) as a dict."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        key, sep, val = str(item).partition("=")
        out[key] = val if sep else None
    return out


def _volume_target(volume: Any) -> str:
    if isinstance(volume, dict):
        return str(volume.get("target"))
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _source(item: Any) -> str:
    return str(item.get("source")) if isinstance(item, dict) else str(item)


def _resolve_env_files(service: dict[str, Any], working_dir: Path, env: Mapping[str, str],
                       name: str) -> None:
    """Fold ``env_file`` into ``environment`` (the file's values first, as Docker does)."""
    files = service.pop("env_file", None)
    if files is None:
        return
    merged: dict[str, Any] = {}
    for file in [files] if isinstance(files, str) else files:
        path = Path(os.path.expanduser(str(file)))
        path = path if path.is_absolute() else working_dir / path
        try:
            merged.update(_read_env_file(path, optional=False, lookup=env))
        except OSError as exc:
            raise ComposeError(f"services.{name}.env_file: cannot read {path}: "
                               f"{exc.strerror}") from exc
    merged.update(_as_map(service.get("environment")))
    service["environment"] = merged


def _read_env_file(path: Path, optional: bool,
                   lookup: Mapping[str, str] | None = None) -> dict[str, str]:
    if optional and not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
        elif lookup is not None and key in lookup:
            out[key] = lookup[key]
    return out
