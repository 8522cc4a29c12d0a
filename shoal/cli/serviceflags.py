"""Docker's ``service create`` / ``service update`` flags, turned into a Service manifest.

This module owns the translation only: flags in, a manifest (``create``) or an edited
manifest (``update``) out, with no etcd and no I/O, so every flag is unit-tested on its
own. Validation of the *result* is not repeated here: the manifest goes through the same
admission, reference and port checks as ``swctl apply`` (``serviceverbs``), so a flag
can never let through what a manifest could not. What is checked here is only what
admission could not word well because the flag's shape is gone by then — a ``-p`` that
is not ``PUBLISHED:TARGET[/PROTO]``, a duration that does not parse, a ``--env-rm`` of a
variable the service does not set — and each such error names the flag and its value.

Flag names and meanings are Docker's (``docker service create --help``); where Docker
silently ignores a removal of something absent, Shoal refuses it (a typo there would
otherwise be an update that changed nothing).
"""

from __future__ import annotations

import argparse
import copy
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from shoal.cli import errors
from shoal.crds import template as tpl
from shoal.crds import units

API_VERSION: Final = "shoal.io/v1"
ORDERS: Final = ("stop-first", "start-first")
UPDATE_ACTIONS: Final = ("pause", "continue", "rollback")
ROLLBACK_ACTIONS: Final = ("pause", "continue")  # a rollback is never itself rolled back
RESTART_CONDITIONS: Final = ("none", "on-failure", "any")
#: Attributes of a parsed ``service update`` that are not changes to the service.
_NOT_CHANGES: Final = frozenset({
    "name", "namespace", "detach", "timeout", "verify_window", "rollback", "func",
    "error_code", "verb", "service_verb", "etcd", "prefix", "request_timeout",
    "keeps_logging", "command_line"})

Spec = dict[str, Any]
FILE_KINDS: Final = ("secret", "config")
FILE_REF_FORM: Final = "NAME, or source=NAME[,target=PATH,uid=N,gid=N,mode=0440]"


# --- flag declarations ---

def _duration(flag: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            units.parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None
        return text
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'invalid number "{text}": expected a whole '
                                         "number >= 0")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'invalid ratio "{text}": expected a number '
                                         "from 0 to 1")
    return value


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f'invalid CPU count "{text}": expected a number '
                                         ">= 0, e.g. 0.5")
    return value


def _config_flags(p: argparse.ArgumentParser, which: str, actions: Sequence[str]) -> None:
    """``--update-*`` or ``--rollback-*``: both configs have the same six fields."""
    group = p.add_argument_group(f"{which} config")
    group.add_argument(f"--{which}-parallelism", type=_non_negative_int, metavar="N",
                       help="tasks replaced at once (0: all at once; default 1)")
    group.add_argument(f"--{which}-delay", type=_duration(f"--{which}-delay"),
                       metavar="DURATION", help="wait between batches (default 0s)")
    group.add_argument(f"--{which}-order", choices=ORDERS,
                       help="stop-first (default) or start-first")
    group.add_argument(f"--{which}-failure-action", choices=actions,
                       help="what a failed task does to the " + which + " (default pause)")
    group.add_argument(f"--{which}-monitor", type=_duration(f"--{which}-monitor"),
                       metavar="DURATION",
                       help="how long after its start a task failure still counts "
                            "(default 5s)")
    group.add_argument(f"--{which}-max-failure-ratio", type=_ratio, metavar="RATIO",
                       help="failures tolerated, 0 to 1 (default 0)")


def add_settable_flags(p: argparse.ArgumentParser) -> None:
    """Flags that set one field, the same on ``create`` and ``update``."""
    p.add_argument("--replicas-max-per-node", type=_non_negative_int, metavar="N",
                   help="at most N tasks of the service per node (0: unlimited)")
    p.add_argument("--endpoint-mode", choices=("vip", "dnsrr"),
                   help="vip (default): one virtual IP; dnsrr: DNS round robin")
    p.add_argument("--entrypoint", metavar="CMD", help="override the image's entrypoint")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory in the task")
    p.add_argument("-u", "--user", metavar="USER", help="user[:group] to run as")
    p.add_argument("--hostname", metavar="NAME", help="the task's hostname")
    p.add_argument("--stop-grace-period", type=_duration("--stop-grace-period"),
                   metavar="DURATION", help="wait before killing a task (default 10s)")
    p.add_argument("--stop-signal", metavar="SIGNAL", help="signal that stops a task")
    p.add_argument("--init", action=argparse.BooleanOptionalAction, default=None,
                   help="run an init as the task's pid 1 (--no-init: docker's --init=false)")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                   help="add a Linux capability, e.g. NET_ADMIN or ALL; RESET clears the "
                        "added ones (repeatable)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                   help="drop a Linux capability, e.g. NET_RAW or ALL; RESET clears the "
                        "dropped ones (repeatable)")
    health = p.add_argument_group("health check")
    health.add_argument("--health-cmd", metavar="CMD", help="command run to check health "
                        "(a shell command, as docker's)")
    health.add_argument("--health-interval", type=_duration("--health-interval"),
                        metavar="DURATION")
    health.add_argument("--health-timeout", type=_duration("--health-timeout"),
                        metavar="DURATION")
    health.add_argument("--health-start-period", type=_duration("--health-start-period"),
                        metavar="DURATION")
    health.add_argument("--health-retries", type=_non_negative_int, metavar="N")
    health.add_argument("--no-healthcheck", action="store_true",
                        help="disable the image's health check")
    restart = p.add_argument_group("restart policy")
    restart.add_argument("--restart-condition", choices=RESTART_CONDITIONS)
    restart.add_argument("--restart-delay", type=_duration("--restart-delay"),
                         metavar="DURATION")
    restart.add_argument("--restart-max-attempts", type=_non_negative_int, metavar="N")
    restart.add_argument("--restart-window", type=_duration("--restart-window"),
                         metavar="DURATION")
    res = p.add_argument_group("resources")
    res.add_argument("--limit-cpu", type=_cpus, metavar="CPUS")
    res.add_argument("--limit-memory", metavar="BYTES", help="e.g. 64m, 1g, 512Mi")
    res.add_argument("--reserve-cpu", type=_cpus, metavar="CPUS")
    res.add_argument("--reserve-memory", metavar="BYTES")
    _config_flags(p, "update", UPDATE_ACTIONS)
    _config_flags(p, "rollback", ROLLBACK_ACTIONS)


def add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="NAME", help="service name (default: made from the "
                   "image name)")
    p.add_argument("--mode", choices=("replicated", "global"), default=None,
                   help="replicated (default) or global (one task per eligible node)")
    p.add_argument("--replicas", type=_non_negative_int, metavar="N",
                   help="number of tasks (default 1)")
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="placement constraint, e.g. node.labels.zone==a (repeatable)")
    p.add_argument("--placement-pref", action="append", default=[],
                   metavar="spread=node.labels.KEY", help="spread preference (repeatable)")
    p.add_argument("-p", "--publish", action="append", default=[],
                   metavar="PUBLISHED:TARGET[/PROTO]",
                   help="publish a port (or published=8080,target=80,protocol=udp,"
                        "mode=host); repeatable")
    p.add_argument("--network", action="append", default=[], metavar="NET",
                   help="attach to a network, or name=NET,alias=A[,alias=B] to give the "
                        "service more DNS names there (repeatable)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable (repeatable)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="service label (repeatable)")
    p.add_argument("--container-label", action="append", default=[], metavar="KEY=VALUE",
                   help="container label (repeatable)")
    p.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                   help="namespaced kernel parameter, e.g. net.core.somaxconn=1024 "
                        "(repeatable)")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                   help="resource limit, e.g. nofile=1024:2048 (-1: unlimited; repeatable)")
    for kind in FILE_KINDS:
        p.add_argument(f"--{kind}", action="append", default=[], metavar=kind.upper(),
                       help=f"give the tasks a {kind} as a file: {FILE_REF_FORM} "
                            "(repeatable)")
    add_settable_flags(p)
    p.add_argument("image", metavar="IMAGE")
    # Everything after the image is the task's command, flags included (`httpd -f -p 80`).
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ARG...")


def add_update_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", metavar="IMAGE", help="the new image")
    p.add_argument("--replicas", type=_non_negative_int, metavar="N",
                   help="number of tasks")
    p.add_argument("--args", metavar="COMMAND", help='the task\'s command, e.g. "httpd -f"')
    for flag, meta, what in (
            ("constraint", "EXPR", "placement constraint"),
            ("placement-pref", "spread=node.labels.KEY", "spread preference"),
            ("publish", "PUBLISHED:TARGET[/PROTO]", "published port"),
            ("network", "NET|name=NET,alias=A", "network"),
            ("env", "KEY=VALUE", "environment variable"),
            ("label", "KEY=VALUE", "service label"),
            ("container-label", "KEY=VALUE", "container label"),
            ("sysctl", "KEY=VALUE", "kernel parameter"),
            ("ulimit", "NAME=SOFT[:HARD]", "resource limit"),
            ("secret", "SECRET", f"secret ({FILE_REF_FORM})"),
            ("config", "CONFIG", f"config ({FILE_REF_FORM})")):
        rm_meta = ("KEY" if flag in ("env", "label", "container-label", "sysctl") else
                   "TARGET[/PROTO]" if flag == "publish" else "NET" if flag == "network"
                   else "NAME" if flag in ("ulimit", *FILE_KINDS) else meta)
        p.add_argument(f"--{flag}-add", action="append", default=[], metavar=meta,
                       help=f"add a {what} (repeatable)")
        p.add_argument(f"--{flag}-rm", action="append", default=[], metavar=rm_meta,
                       help=f"remove a {what.split(' (')[0]} (repeatable)")
    add_settable_flags(p)
    p.add_argument("--force", action="store_true",
                   help="replace every task even if nothing changed (bumps forceUpdate)")
    p.add_argument("--rollback", action="store_true",
                   help="go back to the previous revision (same as swctl service rollback "
                        "NAME); no other change may be given with it")
    p.add_argument("name", metavar="NAME")


# --- values ---

def parse_publish(text: str) -> dict[str, Any]:
    """``8080:80``, ``8080:80/udp``, ``80`` (a port picked for it) or docker's long form
    ``published=8080,target=80,protocol=udp,mode=host`` -> one ``spec.endpoint.ports`` item."""
    if "=" in text:
        port: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("published", "target", "protocol", "mode"):
                raise errors.CliError(
                    f'-p/--publish "{text}": "{part}" is not one of published=, target=, '
                    "protocol=, mode= (e.g. published=8080,target=80,mode=host)")
            port[key] = _port(value.strip(), text) if key in ("published", "target") \
                else value.strip()
        if "target" not in port:
            raise errors.CliError(f'-p/--publish "{text}": target= is required')
        return port
    ports, _, protocol = text.partition("/")
    published, sep, target = ports.rpartition(":")
    port = {"target": _port(target, text)}
    if sep:
        port["published"] = _port(published, text)
    if protocol:
        port["protocol"] = protocol
    return port


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise errors.CliError(f'-p/--publish "{text}": "{value}" is not a port number '
                              "(1-65535); write PUBLISHED:TARGET[/tcp|udp], e.g. 8080:80")
    return int(value)


def parse_network(text: str, flag: str) -> str | dict[str, Any]:
    """``NET``, or docker's long form ``name=NET,alias=A,alias=B`` -> one
    ``spec.networks`` item: the bare name, or ``{name, aliases}``."""
    if "=" not in text:
        return text
    name = ""
    aliases: list[str] = []
    for part in text.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if sep and key in ("name", "target") and value and not name:
            name = value
        elif sep and key == "alias" and value:
            aliases.append(value)
        else:
            raise errors.CliError(
                f'{flag} "{text}": "{part}" is not one of name=NET (once), alias=NAME '
                "(driver options are not supported); e.g. name=backend,alias=db")
    if not name:
        raise errors.CliError(f'{flag} "{text}": name= is required (e.g. '
                              "name=backend,alias=db)")
    return {"name": name, "aliases": list(dict.fromkeys(aliases))} if aliases else name


def _network_name(item: Any) -> Any:
    return item.get("name") if isinstance(item, dict) else item


def _add_networks(current: Sequence[Any], add: Sequence[str], flag: str) -> list[Any]:
    """``current`` with the networks of ``add`` (``--network`` values) appended; one given
    again the same way is a no-op, given again differently an error."""
    out = list(current)
    for text in add:
        item = parse_network(text, flag)
        have = next((i for i in out if _network_name(i) == _network_name(item)), None)
        if have is None:
            out.append(item)
        elif have != item:
            raise errors.CliError(
                f'{flag} "{text}": the service already has network {_network_name(item)} '
                f"(as {have!r}); give each network once, with all its aliases (to change "
                "them: --network-rm NET --network-add name=NET,alias=...)")
    return out


def parse_pair(text: str, flag: str, environ: Mapping[str, str] | None = None
               ) -> tuple[str, str] | None:
    """``KEY=VALUE`` -> (key, value). For ``-e KEY`` alone docker takes the value from
    the caller's environment (``environ``) and drops the variable when it is unset there;
    elsewhere a bare key means an empty value, as ``docker service create --label k``."""
    key, sep, value = text.partition("=")
    if not key:
        raise errors.CliError(f'{flag} "{text}": expected KEY=VALUE')
    if sep:
        return key, value
    if environ is None:
        return key, ""
    return (key, environ[key]) if key in environ else None


def parse_pairs(items: Sequence[str], flag: str,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        pair = parse_pair(item, flag, environ)
        if pair is not None:
            out[pair[0]] = pair[1]
    return out


def parse_ulimit(text: str, flag: str) -> tuple[str, dict[str, int]]:
    """``nofile=1024:2048`` or ``nproc=512`` (soft and hard alike), as docker's --ulimit."""
    name, sep, limits = text.partition("=")
    soft, _, hard = limits.partition(":")
    try:
        if not name.strip() or not sep:
            raise ValueError
        values = {"soft": int(soft), "hard": int(hard or soft)}
    except ValueError:
        raise errors.CliError(f'{flag} "{text}": expected NAME=SOFT[:HARD] with whole '
                              "numbers (-1: unlimited), e.g. nofile=1024:2048") from None
    return name.strip(), values


def parse_ulimits(items: Sequence[str], flag: str) -> dict[str, dict[str, int]]:
    return dict(parse_ulimit(item, flag) for item in items)


def parse_file_ref(text: str, flag: str) -> dict[str, Any]:
    """``--secret db`` or ``--secret source=db,target=pw,uid=70,gid=70,mode=0400`` (as
    docker's: ``src`` for source, a mode in octal when it starts with 0)."""
    if "=" not in text:
        if not text:
            raise errors.CliError(f'{flag} "": expected a name or source=NAME[,...]')
        return {"source": text}
    ref: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = {"src": "source"}.get(key.strip().lower(), key.strip().lower())
        if not sep or key not in ("source", "target", "uid", "gid", "mode") or not value:
            raise errors.CliError(f'{flag} "{text}": expected source=NAME, optionally with '
                                  "target=PATH, uid=N, gid=N, mode=0440 (comma-separated)")
        if key == "mode":
            try:
                ref[key] = int(value, 8 if value.startswith("0") else 10)
            except ValueError:
                raise errors.CliError(f'{flag} "{text}": mode {value} is not a number; '
                                      "write permission bits such as 0440") from None
        else:
            ref[key] = value
    if "source" not in ref:
        raise errors.CliError(f'{flag} "{text}": source=NAME is required')
    return ref


def parse_spread(text: str, flag: str) -> dict[str, str]:
    kind, sep, label = text.partition("=")
    if not sep or kind.strip() != "spread" or not label.strip():
        raise errors.CliError(f'{flag} "{text}": expected spread=node.labels.KEY (the only '
                              "preference docker has)")
    return {"spread": label.strip()}


def default_name(image: str, suffix: str) -> str:
    """Docker makes up a name when ``--name`` is not given; ours says what runs:
    ``busybox-3fa9c`` for ``shoal/busybox:1.0``."""
    base = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in base).strip("-_.")
    return f"{base or 'service'}-{suffix}"


# --- settable fields, shared by create and update ---

def _sub(spec: Spec, *path: str) -> dict[str, Any]:
    node = spec
    for key in path:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    return node


def _set_config(spec: Spec, args: argparse.Namespace, which: str) -> None:
    field = f"{which}Config"
    for flag, key in (("parallelism", "parallelism"), ("delay", "delay"), ("order", "order"),
                      ("failure_action", "failureAction"), ("monitor", "monitor"),
                      ("max_failure_ratio", "maxFailureRatio")):
        value = getattr(args, f"{which}_{flag}", None)
        if value is not None:
            _sub(spec, field)[key] = value


def apply_settable(spec: Spec, args: argparse.Namespace) -> None:
    """Set the fields whose flags were given; the others keep their value."""
    template = _sub(spec, "template")
    if args.replicas_max_per_node is not None:
        _sub(spec, "placement")["maxReplicasPerNode"] = args.replicas_max_per_node
    if args.endpoint_mode is not None:
        _sub(spec, "endpoint")["mode"] = args.endpoint_mode
    if args.entrypoint is not None:
        template["entrypoint"] = _words(args.entrypoint, "--entrypoint")
    for flag, key in (("workdir", "workdir"), ("user", "user"), ("hostname", "hostname"),
                      ("stop_grace_period", "stopGracePeriod"),
                      ("stop_signal", "stopSignal")):
        value = getattr(args, flag)
        if value is not None:
            template[key] = value
    if args.init is not None:
        template["init"] = args.init
    _set_capabilities(template, args)
    _set_health(template, args)
    for flag, key in (("restart_condition", "condition"), ("restart_delay", "delay"),
                      ("restart_max_attempts", "maxAttempts"), ("restart_window", "window")):
        value = getattr(args, flag)
        if value is not None:
            _sub(spec, "restartPolicy")[key] = value
    for flag, section, key in (("limit_cpu", "limits", "cpus"),
                               ("limit_memory", "limits", "memory"),
                               ("reserve_cpu", "reservations", "cpus"),
                               ("reserve_memory", "reservations", "memory")):
        value = getattr(args, flag)
        if value is not None:
            _sub(template, "resources", section)[key] = value
    _set_config(spec, args, "update")
    _set_config(spec, args, "rollback")


def _set_capabilities(template: dict[str, Any], args: argparse.Namespace) -> None:
    """docker's --cap-add / --cap-drop: adding a capability takes it off the dropped ones
    and dropping one takes it off the added ones; RESET empties that list first."""
    if not args.cap_add and not args.cap_drop:
        return
    lists = {key: {tpl.normalize_capability(str(c)) for c in template.get(key) or []}
             for key in ("capAdd", "capDrop")}
    for flag, key, other in ((args.cap_add, "capAdd", "capDrop"),
                             (args.cap_drop, "capDrop", "capAdd")):
        names = [tpl.normalize_capability(c) for c in flag]
        if "CAP_RESET" in names:
            lists[key].clear()
        for name in names:
            if name != "CAP_RESET":
                lists[key].add(name)
                lists[other].discard(name)
    caps = tpl.effective_capabilities(lists["capAdd"], lists["capDrop"])
    for key, value in (("capAdd", caps.add), ("capDrop", caps.drop)):
        if value:
            template[key] = list(value)
        else:
            template.pop(key, None)


def _set_health(template: dict[str, Any], args: argparse.Namespace) -> None:
    timings = {"interval": args.health_interval, "timeout": args.health_timeout,
               "startPeriod": args.health_start_period, "retries": args.health_retries}
    given = {k: v for k, v in timings.items() if v is not None}
    if args.no_healthcheck:
        if given or args.health_cmd is not None:
            raise errors.CliError("--no-healthcheck cannot be combined with --health-* "
                                  "flags: give one or the other")
        template["healthcheck"] = {"test": ["NONE"]}
        return
    if args.health_cmd is None and not given:
        return
    health = _sub(template, "healthcheck")
    if args.health_cmd is not None:
        # As docker: --health-cmd is a shell command.
        health["test"] = ["CMD-SHELL", args.health_cmd]
    elif health.get("test") == ["NONE"]:
        raise errors.CliError("the service's health check is disabled (--no-healthcheck): "
                              "give --health-cmd CMD with the --health-* timings")
    health.update(given)


def _words(text: str, flag: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise errors.CliError(f'{flag} "{text}": {exc}') from None


# --- create ---

def create_manifest(args: argparse.Namespace, name: str, namespace: str | None,
                    environ: Mapping[str, str]) -> dict[str, Any]:
    """The Service ``docker service create`` with these flags would make, as a manifest
    ``swctl apply -f`` would read (defaults are admission's to fill in)."""
    if args.mode == "global" and args.replicas is not None:
        raise errors.CliError("--replicas cannot be used with --mode global: a global "
                              "service runs one task on every eligible node")
    template: dict[str, Any] = {"image": args.image}
    if args.command:
        template["command"] = list(args.command)
    env = parse_pairs(args.env, "-e/--env", environ)
    if env:
        template["env"] = env
    container_labels = parse_pairs(args.container_label, "--container-label")
    if container_labels:
        template["labels"] = container_labels
    sysctls = parse_pairs(args.sysctl, "--sysctl")
    if sysctls:
        template["sysctls"] = sysctls
    ulimits = parse_ulimits(args.ulimit, "--ulimit")
    if ulimits:
        template["ulimits"] = ulimits
    for kind in FILE_KINDS:
        refs = [parse_file_ref(r, f"--{kind}") for r in getattr(args, kind)]
        if refs:
            template[f"{kind}s"] = refs
    spec: Spec = {"template": template}
    if args.mode is not None:
        spec["mode"] = args.mode
    if args.replicas is not None:
        spec["replicas"] = args.replicas
    if args.constraint:
        _sub(spec, "placement")["constraints"] = list(args.constraint)
    if args.placement_pref:
        _sub(spec, "placement")["preferences"] = [
            parse_spread(p, "--placement-pref") for p in args.placement_pref]
    if args.publish:
        _sub(spec, "endpoint")["ports"] = [parse_publish(p) for p in args.publish]
    if args.network:
        spec["networks"] = _add_networks([], args.network, "--network")
    apply_settable(spec, args)
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    labels = parse_pairs(args.label, "--label")
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": "Service", "metadata": metadata, "spec": spec}


# --- update ---

def changes_given(args: argparse.Namespace) -> list[str]:
    """The change flags given on a ``service update`` line (``--image``, ...), as
    typed: ``--rollback`` takes none, since the rollback decides the whole spec."""
    given = []
    for key, value in sorted(vars(args).items()):
        if key == "init" and value is False:
            given.append("--no-init")  # the one flag whose False is a change
            continue
        if key in _NOT_CHANGES or value in (None, False, []):
            continue
        given.append("--" + key.replace("_", "-"))
    return given


def refuse_mixed_rollback(args: argparse.Namespace) -> None:
    others = changes_given(args)
    if args.rollback and others:
        raise errors.CliError(
            f"--rollback cannot be combined with {', '.join(others)}: a rollback goes "
            "back to the previous revision as a whole; roll back first (swctl service "
            f"rollback {args.name}), then update")


def _remove(items: list[Any], gone: Sequence[str], matches: Callable[[Any, str], bool],
            flag: str, what: str, shown: Callable[[Any], str] = str) -> list[Any]:
    for text in gone:
        kept = [item for item in items if not matches(item, text)]
        if len(kept) == len(items):
            have = ", ".join(shown(i) for i in items) or "none"
            raise errors.CliError(f'{flag} "{text}": the service has no such {what} '
                                  f"(it has: {have})")
        items = kept
    return items


def _port_matches(port: Any, text: str) -> bool:
    """``--publish-rm 80``, ``80/udp`` or ``8080:80``: by target port, as docker, and by
    published port too when given."""
    if not isinstance(port, dict):
        return False
    want = parse_publish(text)
    if port.get("target") != want["target"]:
        return False
    if port.get("protocol", "tcp") != want.get("protocol", "tcp"):
        return False
    return "published" not in want or port.get("published") == want["published"]


def _port_text(port: Any) -> str:
    if not isinstance(port, dict):
        return str(port)
    head = f"{port['published']}:" if port.get("published") else ""
    return f"{head}{port.get('target')}/{port.get('protocol', 'tcp')}"


def _edit_list(spec_list: list[Any], add: Sequence[Any], rm: Sequence[str],
               matches: Callable[[Any, str], bool], flag: str, what: str,
               shown: Callable[[Any], str] = str) -> list[Any]:
    # Removals first, then additions, as docker does (so rm+add replaces).
    out = _remove(list(spec_list), rm, matches, f"--{flag}-rm", what, shown)
    for item in add:
        if item not in out:
            out.append(item)
    return out


def _edit_map(mapping: Mapping[str, Any], add: Mapping[str, Any], rm: Sequence[str],
              flag: str, what: str) -> dict[str, Any]:
    out = dict(mapping)
    for key in rm:
        if key not in out:
            have = ", ".join(sorted(out)) or "none"
            raise errors.CliError(f'--{flag}-rm "{key}": the service has no {what} {key} '
                                  f"(it has: {have})")
        del out[key]
    out.update(add)
    return out


def update_manifest(live: Mapping[str, Any], args: argparse.Namespace,
                    environ: Mapping[str, str]) -> dict[str, Any]:
    """``live`` (a Service manifest: apiVersion, kind, metadata, spec) with the changes
    ``docker service update`` flags ask for. ``live`` is not modified."""
    doc = copy.deepcopy(dict(live))
    spec: Spec = doc.setdefault("spec", {})
    meta: dict[str, Any] = doc.setdefault("metadata", {})
    template = _sub(spec, "template")
    if args.image is not None:
        template["image"] = args.image
    if args.replicas is not None:
        if spec.get("mode") == "global":
            raise errors.CliError(f"--replicas: service {meta.get('name')} is global: it "
                                  "runs one task on every eligible node and has no replica "
                                  "count")
        spec["replicas"] = args.replicas
    if args.args is not None:
        template["command"] = _words(args.args, "--args")

    placement = _sub(spec, "placement")
    placement["constraints"] = _edit_list(
        placement.get("constraints") or [], args.constraint_add, args.constraint_rm,
        lambda c, t: str(c).replace(" ", "") == t.replace(" ", ""), "constraint",
        "constraint")
    prefs = [parse_spread(p, "--placement-pref-add") for p in args.placement_pref_add]
    placement["preferences"] = _edit_list(
        placement.get("preferences") or [], prefs, args.placement_pref_rm,
        lambda p, t: p == parse_spread(t, "--placement-pref-rm"), "placement-pref",
        "placement preference", lambda p: f"spread={p.get('spread')}")
    endpoint = _sub(spec, "endpoint")
    endpoint["ports"] = _edit_list(
        endpoint.get("ports") or [], [parse_publish(p) for p in args.publish_add],
        args.publish_rm, _port_matches, "publish", "published port", _port_text)
    spec["networks"] = _add_networks(
        _remove(list(spec.get("networks") or []), args.network_rm,
                lambda n, t: _network_name(n) == t, "--network-rm", "network", _network_name),
        args.network_add, "--network-add")
    env = _edit_map(template.get("env") or {}, parse_pairs(args.env_add, "--env-add", environ),
                    args.env_rm, "env", "environment variable")
    container_labels = _edit_map(template.get("labels") or {},
                                 parse_pairs(args.container_label_add,
                                             "--container-label-add"),
                                 args.container_label_rm, "container-label",
                                 "container label")
    meta["labels"] = _edit_map(meta.get("labels") or {},
                               parse_pairs(args.label_add, "--label-add"), args.label_rm,
                               "label", "label")
    sysctls = _edit_map(template.get("sysctls") or {},
                        parse_pairs(args.sysctl_add, "--sysctl-add"), args.sysctl_rm,
                        "sysctl", "kernel parameter")
    ulimits = _edit_map(template.get("ulimits") or {},
                        parse_ulimits(args.ulimit_add, "--ulimit-add"), args.ulimit_rm,
                        "ulimit", "resource limit")
    files = {f"{kind}s": _edit_list(
        template.get(f"{kind}s") or [],
        [parse_file_ref(r, f"--{kind}-add") for r in getattr(args, f"{kind}_add")],
        # By name, as docker: --secret-rm db drops every reference to db.
        getattr(args, f"{kind}_rm"), lambda r, t: isinstance(r, dict) and r.get("source") == t,
        kind, kind, lambda r: str(r.get("source") if isinstance(r, dict) else r))
        for kind in FILE_KINDS}
    for holder, key, value in ((template, "env", env), (template, "labels", container_labels),
                               (template, "sysctls", sysctls), (template, "ulimits", ulimits),
                               (template, "secrets", files["secrets"]),
                               (template, "configs", files["configs"]),
                               (placement, "constraints", placement["constraints"]),
                               (placement, "preferences", placement["preferences"]),
                               (endpoint, "ports", endpoint["ports"]),
                               (spec, "networks", spec["networks"])):
        # An emptied list or map is dropped, so the spec reads as one never given it
        # (and `diff` against a manifest without the field stays clean).
        if value:
            holder[key] = value
        else:
            holder.pop(key, None)
    if not placement:
        spec.pop("placement", None)
    apply_settable(spec, args)
    if args.force:
        spec["forceUpdate"] = int(spec.get("forceUpdate") or 0) + 1
    return doc
