"""Compose services, networks, secrets and configs as Shoal manifests for one stack.

A stack is a namespace: every object carries ``com.docker.stack.namespace=<stack>`` and is
named ``<stack>_<key>`` unless the file sets ``name:`` or marks it ``external`` (then the
name is used as is and no object is made for it), as ``docker stack deploy`` names them.
Mapping follows Docker 20.10's convert rules field by field; anything Shoal's schema has no
field for yet is left out here rather than invented (see ``UNMAPPED``).

Names inside a stack: as Docker does, every service gets its compose key as an alias on
each of its networks, after the file's own ``aliases`` (``spec.networks`` entries
``{name, aliases}``), so ``db`` resolves from the stack's other services. Network driver
options: Shoal's overlay honours none yet (``crds.networking.driver_option_refusal``);
``encrypted`` is refused -- a network the file wants encrypted must not silently carry
plain text -- unless the caller allows unencrypted networks, and the others are dropped
with a warning.
"""

import base64
import os
import re
from pathlib import Path
from typing import Any

from shoal.compose.errors import ComposeError
from shoal.compose.loader import ComposeProject
from shoal.crds import constraints as cons
from shoal.crds import networking as nw
from shoal.crds import template as tpl

API = "shoal.io/v1"
NS_LABEL = "com.docker.stack.namespace"
IMAGE_LABEL = "com.docker.stack.image"
# Compose keys Docker honours but Shoal's schema cannot carry yet: accepted, reported in
# one warning (so a user knows), and dropped rather than invented into the schema.
UNMAPPED_SERVICE = ("dns", "dns_search", "extra_hosts", "logging", "tty", "stdin_open",
                    "read_only", "isolation", "credential_spec", "tmpfs")
UNMAPPED_DEEP = (
    ("deploy.resources.limits.pids", ("deploy", "resources", "limits", "pids")),
    ("deploy.resources.reservations.generic_resources",
     ("deploy", "resources", "reservations", "generic_resources")),
)


def convert_stack(project: ComposeProject, stack: str, *,
                  allow_unencrypted: bool = False) -> list[dict[str, Any]]:
    """The manifests ``stack deploy`` would apply: networks, secrets, configs, services.
    Raises ``ComposeError`` naming the file(s), the service and the key. A network with
    ``driver_opts: {encrypted: ...}`` is refused unless ``allow_unencrypted``; then it is
    made unencrypted, with a warning saying so."""
    try:
        return _convert(project, stack, allow_unencrypted)
    except ComposeError as exc:
        if exc.file is not None:
            raise
        raise ComposeError(str(exc), ", ".join(project.files)) from exc


def _convert(project: ComposeProject, stack: str,
             allow_unencrypted: bool) -> list[dict[str, Any]]:
    _warn_unmapped(project)
    networks = _networks(project, stack, allow_unencrypted)
    secrets = _files(project, stack, "secrets", "Secret")
    configs = _files(project, stack, "configs", "Config")
    services = [_guarded(project, stack, name, body)
                for name, body in sorted(project.services.items())]
    return (list(networks.values()) + list(secrets[0].values()) + list(configs[0].values())
            + services)


def _warn_unmapped(project: ComposeProject) -> None:
    """One warning naming what the files set that Shoal cannot carry yet."""
    found: set[str] = set()
    for service in project.services.values():
        found |= {k for k in UNMAPPED_SERVICE if service.get(k) is not None}
        for name, path in UNMAPPED_DEEP:
            node: Any = service
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                found.add(name)
        nets = service.get("networks")
        for opts in nets.values() if isinstance(nets, dict) else ():
            found |= {f"networks.{k}" for k in opts or {} if k in ("ipv4_address",
                                                                    "ipv6_address")}
    for body in project.volumes.values():
        if body and (body.get("driver") or body.get("driver_opts")):
            found.add("volumes driver/driver_opts")
    if found:
        project.warnings.append("Not carried to Shoal yet (accepted, no effect): "
                                + ", ".join(sorted(found)))


def _guarded(project: ComposeProject, stack: str, name: str,
             body: dict[str, Any]) -> dict[str, Any]:
    """``_service``, with a value of a shape the loader did not foresee refused, not crashed on."""
    try:
        return _service(project, stack, name, body)
    except ComposeError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise ComposeError(f"services.{name}: a value has the wrong type or form ({exc!r}); "
                           "check the service against the compose file reference") from exc


def _meta(name: str, stack: str, labels: dict[str, str], namespaced: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**labels, NS_LABEL: stack}}
    if namespaced:
        meta["namespace"] = stack
    return meta


def _external(body: dict[str, Any] | None) -> bool:
    ext = (body or {}).get("external")
    return bool(ext) if not isinstance(ext, dict) else True


def object_name(project: ComposeProject, section: str, key: str, stack: str) -> str:
    """The name of the object ``key`` of ``section`` stands for in the stack."""
    body: dict[str, Any] = getattr(project, section).get(key) or {}
    ext = body.get("external")
    if isinstance(ext, dict) and ext.get("name"):
        return str(ext["name"])
    if body.get("name"):
        return str(body["name"])
    return key if _external(body) else f"{stack}_{key}"


def _driver_opts(key: str, body: dict[str, Any], allow_unencrypted: bool,
                 warnings: list[str]) -> None:
    """Refuse ``encrypted`` (unless allowed), warn about every other driver option: the
    overlay honours none yet."""
    opts = body.get("driver_opts") or {}
    for opt in sorted(opts):
        where = f"networks.{key}.driver_opts.{opt}"
        why = nw.driver_option_refusal(str(opt))
        if opt == nw.ENCRYPTED_OPTION and not allow_unencrypted:
            raise ComposeError(f"{where}: {why}; remove the option to deploy the network "
                               "unencrypted, or allow unencrypted networks explicitly")
        warnings.append(f"Ignoring {where}: {why}")


def _networks(project: ComposeProject, stack: str,
              allow_unencrypted: bool) -> dict[str, dict[str, Any]]:
    used = {n for s in project.services.values() for n in (_service_networks(s) or ["default"])}
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(used):
        if key != "default" and key not in project.networks:
            raise ComposeError(f'service network "{key}" is not declared under the top-level '
                               "networks: key; declare it there")
        body = project.networks.get(key) or {}
        if _external(body):
            continue
        driver = body.get("driver") or "overlay"
        if driver != "overlay":
            raise ComposeError(f"networks.{key}.driver: {driver} networks cannot be used by "
                               "swarm services; use the overlay driver")
        _driver_opts(key, body, allow_unencrypted, project.warnings)
        spec: dict[str, Any] = {"driver": "overlay"}
        if body.get("attachable"):
            spec["attachable"] = True
        if body.get("internal"):
            spec["internal"] = True
        ipam = body.get("ipam") or {}
        if ipam.get("driver") not in (None, "default"):
            raise ComposeError(f"networks.{key}.ipam.driver: IPAM driver {ipam['driver']} "
                               "does not exist; leave it out or write default")
        for cfg in ipam.get("config") or []:
            if cfg.get("subnet"):
                spec["subnet"] = str(cfg["subnet"])
            if cfg.get("gateway"):
                spec["gateway"] = str(cfg["gateway"])
            break
        name = object_name(project, "networks", key, stack)
        out[key] = {"apiVersion": API, "kind": "Network",
                    "metadata": _meta(name, stack, _labels(body.get("labels")), False),
                    "spec": spec}
    return out


def _files(project: ComposeProject, stack: str, section: str,
           kind: str) -> tuple[dict[str, dict[str, Any]], None]:
    out: dict[str, dict[str, Any]] = {}
    bodies: dict[str, Any] = getattr(project, section)
    # Docker makes every non-external one the file declares, used or not.
    for key in sorted(bodies):
        body = bodies[key] or {}
        if _external(body):
            continue
        file = body.get("file")
        if not file:
            raise ComposeError(f"{section}.{key}: give file: PATH, or external: true")
        path = Path(_expand_home(str(file), project))
        path = path if path.is_absolute() else project.working_dir / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ComposeError(f"{section}.{key}.file: open {path}: {exc.strerror}") from exc
        value = base64.b64encode(data).decode() if kind == "Secret" else data.decode()
        out[key] = {"apiVersion": API, "kind": kind,
                    "metadata": _meta(object_name(project, section, key, stack), stack,
                                      _labels(body.get("labels")), True),
                    "spec": {"data": value}}
    return out, None


def _expand_home(path: str, project: ComposeProject) -> str:
    """``~`` as the HOME of the environment passed in (the caller's, not this process's)."""
    home = project.env.get("HOME")
    if home and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return path


def _source(item: Any) -> str:
    return str(item.get("source")) if isinstance(item, dict) else str(item)


def _labels(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): "" if v is None else _str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value or []:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def _str(value: Any) -> str:
    """A YAML scalar as Docker prints it (``true``, ``1`` for 1.0, not Python's ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _service_networks(service: dict[str, Any]) -> list[str]:
    nets = service.get("networks")
    if isinstance(nets, dict):
        return list(nets)
    return [str(n) for n in nets or []]


def _attachments(project: ComposeProject, stack: str, name: str,
                 body: dict[str, Any]) -> list[dict[str, Any]]:
    """``spec.networks``: each network (sorted by name, as Docker attaches them) with the
    file's aliases there and then the service's compose key, as Docker gives them."""
    nets = body.get("networks")
    out = []
    for key in _service_networks(body) or ["default"]:
        target = (object_name(project, "networks", key, stack)
                  if key != "default" or "default" in project.networks else f"{stack}_default")
        opts = nets.get(key) if isinstance(nets, dict) else None
        aliases = [str(a) for a in (opts or {}).get("aliases") or []]
        out.append({"name": target, "aliases": list(dict.fromkeys([*aliases, name]))})
    return sorted(out, key=lambda n: n["name"])


def _words(value: Any) -> list[str]:
    import shlex
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _service(project: ComposeProject, stack: str, name: str,
             body: dict[str, Any]) -> dict[str, Any]:
    where = f"services.{name}"
    image = body.get("image")
    if not image:
        raise ComposeError(f"{where}.image: an image reference must be provided")
    deploy = body.get("deploy") or {}
    template: dict[str, Any] = {"image": _tagged(str(image))}
    if body.get("entrypoint") is not None:
        template["entrypoint"] = _words(body["entrypoint"])
    if body.get("command") is not None:
        template["command"] = _words(body["command"])
    env = _environment(body.get("environment"), project.env)
    if env:
        template["env"] = env
    for key, field in (("working_dir", "workdir"), ("user", "user"), ("hostname", "hostname"),
                       ("stop_signal", "stopSignal")):
        if body.get(key):
            template[field] = str(body[key])
    template["labels"] = {**_labels(body.get("labels")), NS_LABEL: stack}
    mounts = _mounts(project, stack, name, body)
    if mounts:
        template["mounts"] = mounts
    try:
        hc = _healthcheck(body.get("healthcheck"))
    except ComposeError as exc:
        raise ComposeError(f"{where}.{exc}") from exc
    if hc is not None:
        template["healthcheck"] = hc
    resources = _resources(deploy.get("resources") or {}, f"{where}.deploy.resources")
    if resources:
        template["resources"] = resources
    if body.get("stop_grace_period") is not None:
        template["stopGracePeriod"] = str(body["stop_grace_period"])
    template.update(_process_settings(body, where))
    for section, default in (("secrets", "{}"), ("configs", "/{}")):
        refs = []
        for item in body.get(section) or []:
            src = _source(item)
            if src not in getattr(project, section):
                raise ComposeError(f'{where}.{section}: undefined {section[:-1]} "{src}"; '
                                   f"declare it under the top-level {section}: key")
            target = str((item.get("target") if isinstance(item, dict) else None)
                         or default.format(src))
            if section == "configs" and not target.startswith("/"):
                target = f"/{target}"  # where Docker puts a relative one; Shoal says so
            ref: dict[str, Any] = {"source": object_name(project, section, src, stack),
                                   "target": target}
            for key in ("uid", "gid", "mode") if isinstance(item, dict) else ():
                if item.get(key) is not None:
                    # Absent: Swarm's root:root 0444, which Shoal's schema fills in too.
                    ref[key] = int(item[key]) if key == "mode" else str(item[key])
            refs.append(ref)
        targets = [r["target"] for r in refs]
        if len(set(targets)) != len(targets):
            dup = next(t for t in targets if targets.count(t) > 1)
            raise ComposeError(f"{where}.{section}: duplicate target {dup} not allowed; "
                               "give each a different target:")
        if refs:
            # Sorted by name, as Docker hands them to the service.
            template[section] = sorted(refs, key=lambda r: r["source"])
    spec: dict[str, Any] = {"template": template}
    mode = deploy.get("mode") or "replicated"
    if mode not in ("replicated", "global"):
        raise ComposeError(f"{where}.deploy.mode: unknown mode {mode}; "
                           "use replicated or global")
    spec["mode"] = mode
    if mode == "global" and deploy.get("replicas") is not None:
        raise ComposeError(f"{where}.deploy.replicas can only be used with replicated mode; "
                           "drop it, or drop mode: global")
    if mode == "replicated":
        spec["replicas"] = int(deploy["replicas"]) if deploy.get("replicas") is not None else 1
    placement = _placement(deploy)
    for pref in placement.get("preferences", []):
        if not cons.spread_is_effective(pref["spread"]):
            project.warnings.append(
                f"{where}.deploy.placement.preferences: spread {pref['spread']!r} spreads "
                "nothing (as in Docker): only node.labels.<key>, engine.labels.<key> and "
                "node attributes such as node.id group nodes")
    if placement:
        spec["placement"] = placement
    try:
        rp = _restart(deploy.get("restart_policy"), body.get("restart"))
    except ComposeError as exc:
        raise ComposeError(f"{where}.{exc}") from exc
    if rp:
        spec["restartPolicy"] = rp
    for key, field in (("update_config", "updateConfig"), ("rollback_config", "rollbackConfig")):
        if deploy.get(key):
            spec[field] = _update(deploy[key])
    spec["networks"] = _attachments(project, stack, name, body)
    endpoint: dict[str, Any] = {}
    if deploy.get("endpoint_mode"):
        endpoint["mode"] = str(deploy["endpoint_mode"]).lower()
    ports = [p for item in body.get("ports") or []
             for p in _ports(item, where, project.warnings)]
    if ports:
        # Sorted by published port (unpublished first), as Docker orders them.
        endpoint["ports"] = sorted(ports, key=lambda p: p.get("published", 0))
    if endpoint.get("mode") == "dnsrr" and any(
            p["mode"] == "ingress" and "published" in p for p in ports):
        raise ComposeError(f"{where}.ports: a port published in ingress mode can't be used "
                           "with endpoint_mode: dnsrr; publish it with mode: host, or use vip")
    if endpoint:
        spec["endpoint"] = endpoint
    labels = {**_labels(deploy.get("labels")), IMAGE_LABEL: str(image)}
    return {"apiVersion": API, "kind": "Service",
            "metadata": _meta(f"{stack}_{name}", stack, labels, True), "spec": spec}


def _process_settings(body: dict[str, Any], where: str) -> dict[str, Any]:
    """``init``, ``cap_add``/``cap_drop``, ``sysctls`` and ``ulimits`` as Docker 20.10's
    stack deploy converts them: capabilities normalised (``CAP_`` prefix, ``ALL``, an
    added one not also dropped), sysctls from a list or a mapping, a bare ulimit number
    as both soft and hard. Whether a node can run them is admission's to say."""
    out: dict[str, Any] = {}
    if body.get("init") is not None:
        out["init"] = bool(body["init"])
    caps: dict[str, set[str]] = {}
    for key in ("cap_add", "cap_drop"):
        items = body.get(key) or []
        if not all(isinstance(c, str) for c in items):
            raise ComposeError(f"{where}.{key} must be a list of strings such as NET_ADMIN")
        caps[key] = {tpl.normalize_capability(c) for c in items}
    effective = tpl.effective_capabilities(caps["cap_add"], caps["cap_drop"])
    if effective.add:
        out["capAdd"] = list(effective.add)
    if effective.drop:
        out["capDrop"] = list(effective.drop)
    sysctls = body.get("sysctls")
    if isinstance(sysctls, dict):
        out["sysctls"] = {str(k): "" if v is None else _str(v) for k, v in sysctls.items()}
    elif sysctls:
        out["sysctls"] = {k: v for k, _, v in (str(item).partition("=") for item in sysctls)}
    ulimits: dict[str, Any] = {}
    for name, value in (body.get("ulimits") or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            ulimits[str(name)] = {"soft": value, "hard": value}
        elif isinstance(value, dict) and set(value) == {"soft", "hard"}:
            ulimits[str(name)] = {"soft": value["soft"], "hard": value["hard"]}
        else:
            raise ComposeError(f"{where}.ulimits.{name} must be an integer or a mapping with "
                               "soft and hard, e.g. {soft: 1024, hard: 2048}")
    if ulimits:
        out["ulimits"] = ulimits
    return out


def _tagged(image: str) -> str:
    """``image`` with ``:latest`` added when it names neither tag nor digest, as Docker
    normalises a reference (a ``:`` before the last ``/`` is a registry port, not a tag)."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return image + ":latest"


def _environment(value: Any, env: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    items = value.items() if isinstance(value, dict) else (
        (k, v if sep else None) for k, sep, v in (str(i).partition("=") for i in value or []))
    for key, val in items:
        if val is None:
            if key in env:
                out[key] = env[key]
            continue
        out[str(key)] = _str(val)
    return out


def _mounts(project: ComposeProject, stack: str, service: str,
            body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in body.get("volumes") or []:
        if isinstance(item, dict):
            kind = str(item.get("type") or "volume")
            source = item.get("source")
            mount: dict[str, Any] = {"type": kind, "target": str(item["target"])}
            read_only = bool(item.get("read_only"))
        else:
            parts = str(item).split(":")
            if len(parts) == 1:
                source, target, opts = None, parts[0], ""
            else:
                source, target = parts[0], parts[1]
                opts = parts[2] if len(parts) > 2 else ""
            read_only = "ro" in opts.split(",")
            kind = "bind" if source and source[0] in "./~" else "volume"
            mount = {"type": kind, "target": target}
        if source:
            source = str(source)
            if kind == "bind":
                source = _expand_home(source, project)
                if not os.path.isabs(source):
                    source = os.path.normpath(project.working_dir / source)
            elif kind == "volume":
                if source not in project.volumes:
                    raise ComposeError(f'services.{service}.volumes: undefined volume '
                                       f"\"{source}\"; declare it under the top-level volumes: key")
                source = object_name(project, "volumes", source, stack)
            mount["source"] = source
        if read_only:
            mount["readOnly"] = True
        out.append(mount)
    # The service-level ``tmpfs:`` key is not converted (Docker 20.10 drops it for services
    # too; it is in the warning); a ``volumes`` entry of ``type: tmpfs`` is the swarm way.
    return out


def _healthcheck(hc: dict[str, Any] | None) -> dict[str, Any] | None:
    if hc is None:
        return None
    if hc.get("disable"):
        if hc.get("test") is not None:
            raise ComposeError("healthcheck: test and disable can't be set at the same time; "
                               "drop one")
        return {"test": ["NONE"]}
    out: dict[str, Any] = {}
    test = hc.get("test")
    if isinstance(test, str):
        out["test"] = ["CMD-SHELL", test]
    elif test is not None:
        out["test"] = [str(t) for t in test]
    for key, field in (("interval", "interval"), ("timeout", "timeout"),
                       ("start_period", "startPeriod")):
        if hc.get(key) is not None:
            out[field] = str(hc[key])
    if hc.get("retries") is not None:
        out["retries"] = int(hc["retries"])
    return out


_RAM = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$", re.IGNORECASE)


def ram_bytes(value: Any) -> int:
    """Docker's RAMInBytes: binary units, ``512M``, ``1g``, ``1024``."""
    match = _RAM.match(str(value).strip())
    if match is None:
        raise ComposeError(f"invalid size {value!r}; write e.g. 512M or 1G")
    power = " kmgtp".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * 1024**power)


def _resources(res: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("limits", "reservations"):
        body = res.get(key) or {}
        part: dict[str, Any] = {}
        try:
            if body.get("cpus") is not None:
                part["cpus"] = float(body["cpus"])
            if body.get("memory") is not None:
                part["memory"] = ram_bytes(body["memory"])
        except (ComposeError, ValueError) as exc:
            raise ComposeError(f"{where}.{key}: {exc}") from exc
        if part:
            out[key] = part
    return out


def _placement(deploy: dict[str, Any]) -> dict[str, Any]:
    placement = deploy.get("placement") or {}
    out: dict[str, Any] = {}
    if placement.get("constraints"):
        out["constraints"] = [str(c) for c in placement["constraints"]]
    if placement.get("preferences"):
        out["preferences"] = [{"spread": str(p["spread"])} for p in placement["preferences"]]
    mrpn = placement.get("max_replicas_per_node", deploy.get("max_replicas_per_node"))
    if mrpn:
        out["maxReplicasPerNode"] = int(mrpn)
    return out


def _restart(policy: dict[str, Any] | None, restart: Any) -> dict[str, Any]:
    """``deploy.restart_policy``, or else the service's ``restart:`` as Docker reads it."""
    out: dict[str, Any] = {}
    if policy is None:
        text = "no" if restart is False or restart is None else str(restart)
        name, _, count = text.partition(":")
        if name in ("", "no"):
            return out
        if name in ("always", "unless-stopped") and not count:
            return {"condition": "any"}
        if name == "on-failure" and (not count or count.isdigit()):
            return {"condition": "on-failure", "maxAttempts": int(count or 0)}
        raise ComposeError(f"restart: unknown restart policy: {text}; use no, always, "
                           "unless-stopped or on-failure[:N]")
    if policy.get("condition"):
        out["condition"] = str(policy["condition"])
    for key, field in (("delay", "delay"), ("window", "window")):
        if policy.get(key) is not None:
            out[field] = str(policy[key])
    if policy.get("max_attempts") is not None:
        out["maxAttempts"] = int(policy["max_attempts"])
    return out


def _update(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.get("parallelism") is not None:
        out["parallelism"] = int(cfg["parallelism"])
    for key, field in (("delay", "delay"), ("monitor", "monitor")):
        if cfg.get(key) is not None:
            out[field] = str(cfg[key])
    if cfg.get("failure_action"):
        out["failureAction"] = str(cfg["failure_action"])
    if cfg.get("max_failure_ratio") is not None:
        out["maxFailureRatio"] = float(cfg["max_failure_ratio"])
    if cfg.get("order"):
        out["order"] = str(cfg["order"])
    return out


def _ports(item: Any, where: str, warnings: list[str]) -> list[dict[str, Any]]:
    """One ``ports:`` entry (long or short syntax) as endpoint ports; a range is expanded."""
    if isinstance(item, dict):
        if item.get("target") is None:
            raise ComposeError(f"{where}.ports: {item!r} has no target; give the container "
                               "port as target:")
        port: dict[str, Any] = {"target": int(item["target"])}
        if item.get("published") is not None:
            port["published"] = int(item["published"])
        port["protocol"] = str(item.get("protocol") or "tcp")
        port["mode"] = str(item.get("mode") or "ingress")
        return [port]
    spec = str(item)
    text, proto = spec, "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        # Swarm publishes on every address; Docker drops the IP and says so.
        warnings.append(f"ignoring IP-address ({parts[0]}:{parts[1]}:{parts[2]}/{proto}) "
                        "service will listen on '0.0.0.0'")
        parts = parts[1:]
    try:
        targets = _range(parts[-1])
        published = _range(parts[0]) if len(parts) == 2 and parts[0] else []
    except ValueError as exc:
        raise ComposeError(f"{where}.ports: invalid port {spec!r}; write "
                           "[HOST:]CONTAINER[/PROTOCOL], e.g. 8080:80/tcp") from exc
    if proto not in ("tcp", "udp", "sctp"):
        raise ComposeError(f"{where}.ports: invalid protocol {proto!r} in {spec!r}; "
                           "use tcp or udp")
    if len(published) > 1 and len(published) != len(targets):
        raise ComposeError(f"{where}.ports: invalid ranges in {spec!r}: the host and the "
                           "container ranges must have the same length")
    out = []
    for i, target in enumerate(targets):
        port = {"target": target, "protocol": proto, "mode": "ingress"}
        if published:
            port["published"] = published[i] if len(published) > 1 else published[0]
        out.append(port)
    return out


def _range(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))
