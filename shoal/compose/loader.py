"""Reading compose files: YAML (anchors, merge keys), version, interpolation, checks, merge.

``load_project`` turns one or more files into a ``ComposeProject`` of plain dicts, checked
the way Docker 20.10's stack loader checks them, so ``convert`` only maps fields. Each file
is interpolated on its own and then merged over the previous ones (services, networks,
volumes, secrets and configs by name), as ``docker stack deploy -c a -c b`` does. Relative
paths resolve against the first file's directory, Docker's working directory.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from shoal.compose import schema
from shoal.compose.casting import cast_values
from shoal.compose.errors import ComposeError
from shoal.compose.interpolate import interpolate
from shoal.crds import nesting

_SECTIONS = ("services", "networks", "volumes", "secrets", "configs")
# A later -c file merges onto an earlier one as Docker merges them (mergo with appended
# slices and overriding values): top-level networks, volumes, secrets and configs are
# replaced whole by name; within a service, scalars are overridden, mappings merged by key
# (environment, labels, networks and deploy labels in list form are read as mappings),
# ports merged by published port, secrets and configs by source, and other lists appended
# (cap_add, dns, placement constraints). ``command``, ``entrypoint`` and ``volumes`` follow
# Docker 23 (replaced; volumes merged by target): 20.10 appended them, a bug Docker fixed.
_MERGE_LISTS_BY: dict[str, Callable[[Any], str]] = {
    "ports": lambda p: _published(p), "volumes": lambda v: _volume_target(v),
    "secrets": lambda s: _source(s), "configs": lambda s: _source(s)}
_REPLACED = frozenset({"command", "entrypoint"})
_AS_MAPPING = frozenset({"environment", "labels", "networks"})


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
    version: str | None = None
    for path in paths:
        data = _load_one(Path(path), env, warnings)
        this = str(data.get("version"))
        if version is not None and this != version:
            raise ComposeError(f"version mismatched between two compose files: {version} "
                               f"and {this}; give every -c file the same version:", str(path))
        version = this
        for name, service in (data.get("services") or {}).items():
            # env_file is read per file, against the first file's directory, as Docker does.
            _resolve_env_files(service, working_dir, env, name)
            old = merged["services"].get(name)
            merged["services"][name] = service if old is None else _merge_service(old, service)
        for section in _SECTIONS[1:]:
            merged[section].update(data.get(section) or {})
    keys = {k for s in merged["services"].values() for k in s}
    ignored = sorted(keys & set(schema.UNSUPPORTED))
    if ignored:
        warnings.append("Ignoring unsupported options: " + ", ".join(ignored))
    deprecated = sorted(keys & set(schema.DEPRECATED))
    if deprecated:
        warnings.append("Ignoring deprecated options:\n\n" + "\n\n".join(
            f"{k}: {schema.DEPRECATED[k]}" for k in deprecated))
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
    except RecursionError:  # PyYAML's composer recurses per level of nesting
        raise ComposeError(nesting.TOO_DEEP, str(path)) from None
    trouble = nesting.problem(data)
    if trouble:
        raise ComposeError(trouble, str(path))
    if not isinstance(data, dict):
        raise ComposeError("top-level object must be a mapping", str(path))
    # Docker's order: forbidden keys, then interpolation, then the version and the schema.
    try:
        _check_forbidden(data.get("services"))
    except ComposeError as exc:
        raise ComposeError(str(exc), str(path)) from exc
    try:
        for section in _SECTIONS:
            if section in data and not isinstance(data[section], dict):
                raise ComposeError(f"{section} must be a mapping; got {data[section]!r} "
                                   "(an empty section is {} or left out)")
        data = {k: (interpolate(v, env, k, warnings.append) if k in _SECTIONS else v)
                for k, v in data.items()}
        cast_values(data)
        _check(data, _check_version(data.get("version")))
    except ComposeError as exc:
        raise ComposeError(str(exc), str(path)) from exc
    return {k: _drop_extensions(v) if k in _SECTIONS else v for k, v in data.items()
            if not str(k).startswith("x-")}


def _drop_extensions(section: dict[str, Any]) -> dict[str, Any]:
    """The section without ``x-`` keys in its objects (they only feed anchors)."""
    return {name: {k: v for k, v in body.items() if not str(k).startswith("x-")}
            if isinstance(body, dict) else body for name, body in section.items()}


def _check_version(version: Any) -> int:
    """The 3.x minor version of the file (``3`` is 3.0); refuses any other version."""
    text = "1.0" if version is None else str(version)
    major, _, minor = text.partition(".")
    if major != "3" or (minor and (not minor.isdigit() or int(minor) > 9)):
        raise ComposeError(f"unsupported Compose file version: {text}; "
                           'stack files need version: "3.x" (3.0 to 3.9)')
    return int(minor or 0)


def _check_forbidden(services: Any) -> None:
    for name, service in (services or {}).items() if isinstance(services, dict) else ():
        for key in service if isinstance(service, dict) else ():
            if key in schema.FORBIDDEN:
                raise ComposeError(f"Compose file contains unsupported options: {key} "
                                   f"(in services.{name}): {schema.FORBIDDEN[key]}")


def _check(data: dict[str, Any], minor: int) -> None:
    """``data`` against the keys its version takes; the first problem is raised."""
    _keys(data, "top", "", minor)
    for section in _SECTIONS:
        for name, body in (data.get(section) or {}).items():
            if section == "services":
                _check_service(body, f"services.{name}", minor)
            elif body is not None:
                _check_top_object(body, section[:-1], f"{section}.{name}", minor)


def _check_top_object(body: Any, kind: str, where: str, minor: int) -> None:
    _keys(body, kind, where, minor)
    _check_shapes(body, _TOP_SHAPES, where)
    for i, cfg in enumerate((body.get("ipam") or {}).get("config") or []):
        if not isinstance(cfg, dict):
            raise ComposeError(f"{where}.ipam.config.{i} must be a mapping such as "
                               "{subnet: 10.0.9.0/24}")
    if isinstance(body.get("external"), dict):
        _keys(body["external"], "external", f"{where}.external", minor)
    if kind == "network" and body.get("ipam") is not None:
        _keys(body["ipam"], "ipam", f"{where}.ipam", minor)
        for i, cfg in enumerate(body["ipam"].get("config") or []):
            _keys(cfg, "ipam_config", f"{where}.ipam.config.{i}", minor)


# The shape of the keys the converter reads (Docker's schema types), as paths below a
# service or a top-level object; a value of another shape is refused naming its key.
_LIST: tuple[type, ...] = (list,)
_DICT: tuple[type, ...] = (dict,)
_STR: tuple[type, ...] = (str,)
_LIST_OR_DICT: tuple[type, ...] = (list, dict)
_STR_OR_LIST: tuple[type, ...] = (str, list)
_BOOL_OR_DICT: tuple[type, ...] = (bool, dict)
_SERVICE_SHAPES: tuple[tuple[tuple[str, ...], tuple[type, ...]], ...] = (
    (("ports",), _LIST), (("volumes",), _LIST), (("secrets",), _LIST), (("configs",), _LIST),
    (("tmpfs",), _STR_OR_LIST), (("environment",), _LIST_OR_DICT),
    (("labels",), _LIST_OR_DICT), (("networks",), _LIST_OR_DICT),
    (("command",), _STR_OR_LIST), (("entrypoint",), _STR_OR_LIST),
    (("env_file",), _STR_OR_LIST), (("image",), _STR), (("hostname",), _STR),
    (("user",), _STR), (("working_dir",), _STR), (("stop_signal",), _STR),
    (("deploy",), _DICT), (("healthcheck",), _DICT), (("healthcheck", "test"), _STR_OR_LIST),
    (("deploy", "labels"), _LIST_OR_DICT), (("deploy", "placement", "constraints"), _LIST),
    (("deploy", "placement", "preferences"), _LIST), (("init",), (bool,)),
    (("cap_add",), _LIST), (("cap_drop",), _LIST), (("sysctls",), _LIST_OR_DICT),
    (("ulimits",), _DICT),
)
_TOP_SHAPES: tuple[tuple[tuple[str, ...], tuple[type, ...]], ...] = (
    (("name",), _STR), (("file",), _STR), (("driver",), _STR), (("driver_opts",), _DICT),
    (("labels",), _LIST_OR_DICT), (("external",), _BOOL_OR_DICT), (("internal",), (bool,)),
    (("attachable",), (bool,)), (("ipam",), _DICT), (("ipam", "config"), _LIST),
)
_SHAPE_NAMES: dict[tuple[type, ...], str] = {
    _LIST: "a list", _DICT: "a mapping", _STR: "a string", _LIST_OR_DICT: "a list or a mapping",
    _STR_OR_LIST: "a string or a list", _BOOL_OR_DICT: "a boolean or a mapping",
    (bool,): "a boolean"}


def _check_shapes(body: dict[str, Any],
                  table: tuple[tuple[tuple[str, ...], tuple[type, ...]], ...],
                  where: str) -> None:
    for path, shape in table:
        node: Any = body
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, shape):
            raise ComposeError(f"{where}.{'.'.join(path)} must be {_SHAPE_NAMES[shape]}; "
                               f"got {node!r}")


def _check_service(service: Any, where: str, minor: int) -> None:
    _keys(service, "service", where, minor)
    _check_shapes(service, _SERVICE_SHAPES, where)
    nets = service.get("networks")
    for net, opts in nets.items() if isinstance(nets, dict) else ():
        if opts is not None:
            _keys(opts, "service_network", f"{where}.networks.{net}", minor)
            if opts.get("aliases") is not None and not isinstance(opts["aliases"], list):
                raise ComposeError(f"{where}.networks.{net}.aliases must be a list")
    for key in ("secrets", "configs"):
        for i, item in enumerate(service.get(key) or []):
            if isinstance(item, dict):
                _keys(item, "file_ref", f"{where}.{key}.{i}", minor)
                # Docker's schema types: ids are strings (uid: "1000"), mode a number.
                for field in ("uid", "gid"):
                    if item.get(field) is not None and not isinstance(item[field], str):
                        raise ComposeError(f"{where}.{key}.{i}.{field} must be a string")
                mode = item.get("mode")
                if mode is not None and (isinstance(mode, bool)
                                         or not isinstance(mode, int | float)):
                    raise ComposeError(f"{where}.{key}.{i}.mode must be a number")
            elif not isinstance(item, str):
                raise ComposeError(f"{where}.{key}.{i} must be a string or a mapping")
    deploy = service.get("deploy") or {}
    placement = deploy.get("placement") if isinstance(deploy, dict) else None
    prefs = placement.get("preferences") if isinstance(placement, dict) else None
    for i, pref in enumerate(prefs if isinstance(prefs, list) else []):
        if not isinstance(pref, dict):
            raise ComposeError(f"{where}.deploy.placement.preferences.{i} must be a mapping "
                               "such as {spread: node.labels.zone}")
    for key, kind in (("ports", "port"), ("volumes", "mount")):
        for i, item in enumerate(service.get(key) or []):
            if isinstance(item, dict):
                _keys(item, kind, f"{where}.{key}.{i}", minor)
            elif not isinstance(item, str | int):
                raise ComposeError(f"{where}.{key}.{i} must be a string")
    if service.get("healthcheck") is not None:
        _keys(service["healthcheck"], "healthcheck", f"{where}.healthcheck", minor)
    _check_scalars(service, where)
    deploy = service.get("deploy")
    if deploy is None:
        return
    where = f"{where}.deploy"
    _keys(deploy, "deploy", where, minor)
    labels = deploy.get("labels")
    if isinstance(labels, list) and not all(isinstance(x, str) for x in labels):
        raise ComposeError(f"{where}.labels must be a mapping; write KEY: value or "
                           '"KEY=value" entries')
    for key in ("update_config", "rollback_config", "restart_policy", "placement",
                "resources"):
        if deploy.get(key) is not None:
            _keys(deploy[key], key, f"{where}.{key}", minor)
    for i, pref in enumerate((deploy.get("placement") or {}).get("preferences") or []):
        _keys(pref, "preference", f"{where}.placement.preferences.{i}", minor)
    for key in ("limits", "reservations"):
        body = (deploy.get("resources") or {}).get(key)
        if body is not None:
            _keys(body, key, f"{where}.resources.{key}", minor)
    replicas = deploy.get("replicas")
    if replicas is not None and not _is_int(replicas):
        raise ComposeError(f"{where}.replicas must be a integer; got {replicas!r}")


_GO_DURATION = re.compile(r"^[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$")
_SCALAR_OK: dict[str, Callable[[Any], bool]] = {
    "duration": lambda v: isinstance(v, str) and bool(_GO_DURATION.match(v)),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}
_SCALAR_HINT = {"duration": 'a duration string such as "10s", "1m30s" or "500ms"',
                "string": 'a string (quote it: "0.5", "512M")', "integer": "an integer",
                "number": "a number"}


def _check_scalars(service: dict[str, Any], where: str) -> None:
    for path, kind in schema.SCALARS:
        node: Any = service
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not _SCALAR_OK[kind](node):
            raise ComposeError(f"{where}.{'.'.join(path)} must be {_SCALAR_HINT[kind]}; "
                               f"got {node!r}")


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit())


def _keys(body: Any, kind: str, where: str, minor: int) -> None:
    if not isinstance(body, dict):
        raise ComposeError(f"{where or 'top level'} must be a mapping")
    allowed = schema.SINCE[kind]
    for key in body:
        if isinstance(key, str) and key.startswith("x-"):
            since = schema.X_TOP_SINCE if kind == "top" else (
                schema.X_NESTED_SINCE if kind in schema.X_NESTED else 99)
            if minor >= since:
                continue
        if not isinstance(key, str) or allowed.get(key, 99) > minor:
            hint = (f" (it needs version 3.{allowed[key]} or later)"
                    if isinstance(key, str) and key in allowed
                    else "" if not str(key).startswith("x-") else
                    " (extension fields need a later version)")
            prefix = f"{where} " if where else ""
            raise ComposeError(f"{prefix}Additional property {key} is not allowed{hint}")


def _merge_service(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``base``, one service named in two -c files."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        ident = _MERGE_LISTS_BY.get(key)
        if value is None or old is None or key in _REPLACED:
            out[key] = old if value is None else value
        elif key in _AS_MAPPING:
            out[key] = {**_as_map(old), **_as_map(value)}
        elif ident and isinstance(value, list) and isinstance(old, list):
            by_id = {ident(x): x for x in old}
            by_id.update({ident(x): x for x in value})
            # Docker sorts the merged list: ports by published port, the others by source.
            order = sorted(by_id, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
            out[key] = [by_id[k] for k in order] if key != "volumes" else list(by_id.values())
        else:
            out[key] = _merge_value(old, value)
    return out


def _merge_value(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if key == "labels" and key in out:
                out[key] = {**_as_map(out[key]), **_as_map(value)}
            else:
                out[key] = _merge_value(out.get(key), value) if key in out else value
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + over
    return base if over is None else over


def _published(port: Any) -> str:
    """The published part of a port, Docker's merge key (the spec itself when unpublished)."""
    if isinstance(port, dict):
        return str(port.get("published") or port)
    parts = str(port).split("/")[0].rsplit(":", 2)
    return parts[-2] if len(parts) > 1 else str(port)


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
        path = Path(str(file))
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
