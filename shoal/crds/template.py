"""One reading of a task template (``spec.template`` of a Service or a Task).

Admission, the agent's task view and every driver read the template; each used to read
it its own way (the stop grace period was parsed in three places, the bind-mount rule
written twice), so what admission let through was not always what a driver would run.
Here each field has one typed accessor, and every rule about a field lives in it:

* ``image``, ``command`` (entrypoint / command / args and how they combine with the
  image's), ``env``, ``labels``, ``workdir`` / ``user`` / ``hostname`` / ``stop_signal``,
  ``mounts``, ``healthcheck``, ``resources``, ``stop_grace``, ``secrets``, ``configs``,
  and the process settings Docker runs with: ``init``, ``capabilities`` (capAdd /
  capDrop), ``sysctls``, ``ulimits``;
* ``problems`` runs every accessor and returns all their refusals, which is how admission
  checks a template: it accepts exactly what the accessors will later read.

An accessor raises ``TemplateError`` carrying the field path (``spec.template.mounts[0]
.source``) and what is wrong with it. Admission turns it into a FieldError; the agent
turns it into a rejected task. Accessors take the template mapping itself and never
modify it; an absent optional field reads as its default (Swarm's where it has one).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from shoal.crds import units
from shoal.crds.fielderrors import child, describe, quote, suggest

PATH: Final = "spec.template"
#: Swarm's stop grace period, used when the template gives none.
DEFAULT_STOP_GRACE: Final = 10.0
HEALTH_TESTS: Final = ("NONE", "CMD", "CMD-SHELL")
#: The shortest health-check interval, timeout or start period Docker takes (0: default).
HEALTH_MIN_TIMING: Final = 0.001
MOUNT_TYPES: Final = ("bind", "volume", "tmpfs")
SECRETS_DIR: Final = "/run/secrets"

T = TypeVar("T")


class TemplateError(ValueError):
    """One field of a template that cannot be read: ``path`` says which, ``problem`` what."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


Problems = list[TemplateError]


def _field(name: str) -> str:
    return f"{PATH}.{name}"


def _run(reader: Callable[[Mapping[str, Any], Problems], T], template: Mapping[str, Any]) -> T:
    """Run one reader; raise its first problem. Readers collect every problem they find
    (admission wants them all) and still return their best reading."""
    problems: Problems = []
    value = reader(template, problems)
    if problems:
        raise problems[0]
    return value


def of(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The template inside a Service's or Task's ``spec``, or TemplateError."""
    template = spec.get("template")
    if not isinstance(template, Mapping):
        got = "missing" if template is None else describe(template)
        raise TemplateError(PATH, f"must be a mapping, got {got}")
    return template


# --- image and command -----------------------------------------------------------------


def _image(template: Mapping[str, Any], problems: Problems) -> str:
    value = template.get("image")
    if not isinstance(value, str) or not value.strip():
        problems.append(TemplateError(_field("image"), "must be a non-empty string, such as "
                                                       "nginx:1.25"))
        return ""
    return value


def image(template: Mapping[str, Any]) -> str:
    """The image reference; required."""
    return _run(_image, template)


@dataclasses.dataclass(frozen=True)
class Command:
    """``entrypoint``, ``command`` and ``args`` as written (None: not given).

    Compose's semantics, which Shoal's manifest follows: ``entrypoint`` replaces the
    image's ENTRYPOINT, ``command`` replaces its CMD, ``args`` are appended to whichever
    command results, and — as with ``docker run --entrypoint`` — overriding the entrypoint
    drops the image's CMD.
    """

    entrypoint: list[str] | None = None
    command: list[str] | None = None
    args: list[str] = dataclasses.field(default_factory=list)

    def resolve(self, image_cmd: list[str] | None = None
                ) -> tuple[list[str] | None, list[str] | None]:
        """(entrypoint, cmd) to give a container runtime; None keeps the image's.
        ``image_cmd`` is only needed when ``args`` must be appended to the image's CMD."""
        if self.entrypoint is not None:
            return self.entrypoint, (self.command or []) + self.args
        if self.command is not None:
            return None, self.command + self.args
        if self.args:
            return None, list(image_cmd or []) + self.args
        return None, None

    @property
    def uses_image_cmd(self) -> bool:
        """Only ``args`` are given: they go after the image's CMD, which must be known."""
        return self.entrypoint is None and self.command is None and bool(self.args)

    def argv(self) -> list[str]:
        """The whole argv of a task run without an image (empty: nothing to run)."""
        entrypoint, cmd = self.resolve()
        return (entrypoint or []) + (cmd or [])


def _words(template: Mapping[str, Any], name: str, problems: Problems) -> list[str] | None:
    value = template.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(TemplateError(_field(name), f"must be a list of strings, got "
                                                    f"{describe(value)}"))
        return None
    return list(value)


def _command(template: Mapping[str, Any], problems: Problems) -> Command:
    return Command(entrypoint=_words(template, "entrypoint", problems),
                   command=_words(template, "command", problems),
                   args=_words(template, "args", problems) or [])


def command(template: Mapping[str, Any]) -> Command:
    """``entrypoint``, ``command`` and ``args``; each a list of strings when given."""
    return _run(_command, template)


# --- environment, labels, plain strings ------------------------------------------------


def _string_map(template: Mapping[str, Any], name: str, problems: Problems) -> dict[str, str]:
    value = template.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(TemplateError(_field(name), f"must be a mapping of names to strings, "
                                                    f"got {describe(value)}"))
        return {}
    # YAML may hand over numbers or nulls; the runtime wants text (null: empty).
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _env(template: Mapping[str, Any], problems: Problems) -> dict[str, str]:
    return _string_map(template, "env", problems)


def env(template: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables to set, as text."""
    return _run(_env, template)


def _labels(template: Mapping[str, Any], problems: Problems) -> dict[str, str]:
    return _string_map(template, "labels", problems)


def labels(template: Mapping[str, Any]) -> dict[str, str]:
    """The user's container labels (the agent adds its own on top)."""
    return _run(_labels, template)


def _text(template: Mapping[str, Any], name: str, problems: Problems) -> str | None:
    value = template.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.append(TemplateError(_field(name), f"must be a string, got {describe(value)}"))
        return None
    return value


def _workdir(template: Mapping[str, Any], problems: Problems) -> str | None:
    return _text(template, "workdir", problems)


def workdir(template: Mapping[str, Any]) -> str | None:
    """The working directory; None keeps the image's (``/`` without an image)."""
    return _run(_workdir, template)


def _user(template: Mapping[str, Any], problems: Problems) -> str | None:
    return _text(template, "user", problems)


def user(template: Mapping[str, Any]) -> str | None:
    """The user to run as; None keeps the image's."""
    return _run(_user, template)


def _hostname(template: Mapping[str, Any], problems: Problems) -> str | None:
    return _text(template, "hostname", problems)


def hostname(template: Mapping[str, Any]) -> str | None:
    """The hostname inside the task; None lets the driver choose."""
    return _run(_hostname, template)


def _stop_signal(template: Mapping[str, Any], problems: Problems) -> str | None:
    return _text(template, "stopSignal", problems)


def stop_signal(template: Mapping[str, Any]) -> str | None:
    """The signal that asks the task to stop; None means the default (SIGTERM)."""
    return _run(_stop_signal, template)


# --- stop grace period -----------------------------------------------------------------


def _duration(value: Any, path: str, problems: Problems) -> float | None:
    if value is None:
        return None
    try:
        return units.parse_duration(value)
    except (ValueError, TypeError) as exc:
        problems.append(TemplateError(path, str(exc)))
        return None


def _stop_grace(template: Mapping[str, Any], problems: Problems) -> float:
    grace = _duration(template.get("stopGracePeriod"), _field("stopGracePeriod"), problems)
    return DEFAULT_STOP_GRACE if grace is None else grace


def stop_grace(template: Mapping[str, Any]) -> float:
    """Seconds between the stop signal and SIGKILL (Swarm's 10 s when not given)."""
    return _run(_stop_grace, template)


# --- mounts ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mount:
    """One mount: ``type`` is bind, volume or tmpfs; ``source`` is "" for tmpfs, a host
    path for bind, a volume name (or "" for an anonymous volume) for volume."""

    type: str
    source: str
    target: str
    read_only: bool = False


def _mount(raw: Any, path: str, problems: Problems) -> Mount | None:
    if not isinstance(raw, Mapping):
        problems.append(TemplateError(path, f"must be a mapping, got {describe(raw)}"))
        return None
    before = len(problems)
    kind, source, target = raw.get("type") or "volume", raw.get("source"), raw.get("target")
    if kind not in MOUNT_TYPES:
        problems.append(TemplateError(f"{path}.type", f"must be one of {', '.join(MOUNT_TYPES)};"
                                                      f" got {describe(kind)}"))
    if not isinstance(target, str) or not target:
        problems.append(TemplateError(f"{path}.target", "required: the path inside the task"))
    elif not target.startswith("/"):
        problems.append(TemplateError(f"{path}.target", f"must be an absolute path, got "
                                                        f"{quote(target)}"))
    if source is not None and not isinstance(source, str):
        problems.append(TemplateError(f"{path}.source", f"must be a string, got "
                                                        f"{describe(source)}"))
    elif kind == "bind" and not source:
        problems.append(TemplateError(f"{path}.source", "required for a bind mount: the host "
                                                        "path to mount"))
    elif kind == "bind" and isinstance(source, str) and not source.startswith("/"):
        problems.append(TemplateError(f"{path}.source", f"a bind mount's source must be an "
                                                        f"absolute host path, got "
                                                        f"{quote(source)}"))
    elif kind == "tmpfs" and source:
        problems.append(TemplateError(f"{path}.source", "a tmpfs mount takes no source"))
    if len(problems) > before:
        return None
    return Mount(type=str(kind), source=str(source or ""), target=str(target),
                 read_only=raw.get("readOnly") is True)


def _mounts(template: Mapping[str, Any], problems: Problems) -> list[Mount]:
    value = template.get("mounts")
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(TemplateError(_field("mounts"), f"must be a list, got "
                                                        f"{describe(value)}"))
        return []
    found = (_mount(raw, f"{_field('mounts')}[{i}]", problems) for i, raw in enumerate(value))
    return [m for m in found if m is not None]


def mounts(template: Mapping[str, Any]) -> list[Mount]:
    """The mounts, each checked: an absolute target; a bind mount needs an absolute host
    path as its source; a tmpfs mount takes none."""
    return _run(_mounts, template)


# --- health check ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Healthcheck:
    """The template's health check. ``test`` is Docker's list form: ``["NONE"]`` (turn
    the image's check off), ``["CMD", prog, args...]`` or ``["CMD-SHELL", "command"]``;
    empty when only timings are given (they then adjust the image's check). Durations are
    seconds; None (and retries None) means Docker's or the image's default."""

    test: list[str]
    interval: float | None = None
    timeout: float | None = None
    start_period: float | None = None
    retries: int | None = None

    @property
    def disabled(self) -> bool:
        return self.test[:1] == ["NONE"]


def _healthcheck(template: Mapping[str, Any], problems: Problems) -> Healthcheck | None:
    check = template.get("healthcheck")
    path = _field("healthcheck")
    if check is None:
        return None
    if not isinstance(check, Mapping):
        problems.append(TemplateError(path, f"must be a mapping, got {describe(check)}"))
        return None
    before = len(problems)
    test = check.get("test")
    if test is None or test == []:
        test = []
    elif not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        problems.append(TemplateError(f"{path}.test", f"must be a list of strings, got "
                                                      f"{describe(test)}"))
    elif test[0] not in HEALTH_TESTS:
        problems.append(TemplateError(f"{path}.test[0]", f"must be NONE, CMD or CMD-SHELL, "
                                                         f"got {describe(test[0])} (write [CMD,"
                                                         ' prog, arg...] or [CMD-SHELL, '
                                                         '"command line"])'))
    elif test[0] != "NONE" and len(test) < 2:
        problems.append(TemplateError(f"{path}.test", f"{test[0]} needs the command to run "
                                                      "after it"))
    timings = {name: _duration(check.get(name), f"{path}.{name}", problems)
               for name in ("interval", "timeout", "startPeriod")}
    for name, seconds in timings.items():
        # Docker refuses a positive timing under 1 ms when the container is created;
        # refused here, admission says so instead of every start failing.
        if seconds is not None and 0 < seconds < HEALTH_MIN_TIMING:
            problems.append(TemplateError(f"{path}.{name}", f"must be at least 1ms (or 0 for "
                                                            f"the default), got "
                                                            f"{describe(check[name])}"))
    retries = check.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)
                                or retries < 0):
        problems.append(TemplateError(f"{path}.retries", f"must be a whole number >= 0, got "
                                                         f"{describe(retries)}"))
    if len(problems) > before:
        return None
    return Healthcheck(test=list(test), interval=timings["interval"],
                       timeout=timings["timeout"], start_period=timings["startPeriod"],
                       retries=retries)


def healthcheck(template: Mapping[str, Any]) -> Healthcheck | None:
    """The health check, or None when the template has none."""
    return _run(_healthcheck, template)


# --- resources -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resources:
    """Limits and reservations; None (or 0, which manifests use for "none") is unset."""

    limit_cpus: float | None = None
    limit_memory: int | None = None  # bytes
    reserve_cpus: float | None = None
    reserve_memory: int | None = None  # bytes

    @property
    def limit_nano_cpus(self) -> int | None:
        """The CPU limit as Docker's NanoCpus, rounded up (a limit is never cut short)."""
        return math.ceil(self.limit_cpus * 1e9) if self.limit_cpus else None


def _amount(section: Mapping[str, Any], name: str, path: str,
            parse: Callable[[Any], T], problems: Problems) -> T | None:
    value = section.get(name)
    if value is None or value == "" or value == 0:
        return None
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        problems.append(TemplateError(f"{path}.{name}", str(exc)))
        return None


def _resources(template: Mapping[str, Any], problems: Problems) -> Resources:
    spec = template.get("resources")
    path = _field("resources")
    if spec is None:
        return Resources()
    if not isinstance(spec, Mapping):
        problems.append(TemplateError(path, f"must be a mapping, got {describe(spec)}"))
        return Resources()
    parts: dict[str, Mapping[str, Any]] = {}
    for part in ("limits", "reservations"):
        value = spec.get(part)
        if value is not None and not isinstance(value, Mapping):
            problems.append(TemplateError(f"{path}.{part}", f"must be a mapping, got "
                                                            f"{describe(value)}"))
        parts[part] = value if isinstance(value, Mapping) else {}
    read = Resources(
        limit_cpus=_amount(parts["limits"], "cpus", f"{path}.limits", units.parse_cpus,
                           problems),
        limit_memory=_amount(parts["limits"], "memory", f"{path}.limits", units.parse_size,
                             problems),
        reserve_cpus=_amount(parts["reservations"], "cpus", f"{path}.reservations",
                             units.parse_cpus, problems),
        reserve_memory=_amount(parts["reservations"], "memory", f"{path}.reservations",
                               units.parse_size, problems),
    )
    for name, limit, reserved in (("cpus", read.limit_cpus, read.reserve_cpus),
                                  ("memory", read.limit_memory, read.reserve_memory)):
        if limit is not None and reserved is not None and reserved > limit:
            problems.append(TemplateError(
                f"{path}.reservations.{name}",
                f"reserves more than the limit ({parts['reservations'][name]} > "
                f"{parts['limits'][name]})"))
    return read


def resources(template: Mapping[str, Any]) -> Resources:
    """CPU and memory limits and reservations; a reservation may not exceed its limit."""
    return _run(_resources, template)


# --- secrets and configs ---------------------------------------------------------------

#: Swarm's file fields when a reference leaves them out: root-owned, read-only for all.
DEFAULT_FILE_UID: Final = "0"
DEFAULT_FILE_GID: Final = "0"
DEFAULT_FILE_MODE: Final = 0o444
MAX_FILE_MODE: Final = 0o777


@dataclasses.dataclass(frozen=True)
class FileRef:
    """A secret or config the task gets as a file: ``source`` names the object, ``target``
    is the full path where the file appears (a secret's under /run/secrets unless given
    absolute, as in Swarm), owned by ``uid``:``gid`` (numeric, as Swarm's SecretReference
    takes them) with permission bits ``mode``."""

    source: str
    target: str
    uid: str = DEFAULT_FILE_UID
    gid: str = DEFAULT_FILE_GID
    mode: int = DEFAULT_FILE_MODE


def _owner(raw: Mapping[str, Any], key: str, default: str, path: str,
           problems: Problems) -> str:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)  # YAML reads uid: 1000 as a number; Swarm means the same
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return str(int(value))
    problems.append(TemplateError(f"{path}.{key}", f"must be a numeric id such as \"1000\" "
                                                   f"(names are not looked up), got "
                                                   f"{describe(value)}"))
    return default


def _mode(raw: Mapping[str, Any], path: str, problems: Problems) -> int:
    value = raw.get("mode")
    if value is None:
        return DEFAULT_FILE_MODE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FILE_MODE:
        problems.append(TemplateError(f"{path}.mode", f"must be permission bits 0..0o777 "
                                                      f"(0..511; 0o444 = 292 is the default), "
                                                      f"got {describe(value)}"))
        return DEFAULT_FILE_MODE
    return value


def _file_refs(template: Mapping[str, Any], name: str,
               place: Callable[[str, str, str, Problems], str | None], problems: Problems
               ) -> list[FileRef]:
    """``place(source, target, path, problems)``: the full target, or None (a problem)."""
    value = template.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(TemplateError(_field(name), f"must be a list, got {describe(value)}"))
        return []
    refs = []
    for index, raw in enumerate(value):
        path = f"{_field(name)}[{index}]"
        if not isinstance(raw, Mapping):
            problems.append(TemplateError(path, f"must be a mapping, got {describe(raw)}"))
            continue
        source, target = raw.get("source"), raw.get("target")
        if not isinstance(source, str) or not source:
            problems.append(TemplateError(f"{path}.source", f"required: the name of the "
                                                            f"{name[:-1]} to use"))
            continue
        if target is not None and not isinstance(target, str):
            problems.append(TemplateError(f"{path}.target", f"must be a string, got "
                                                            f"{describe(target)}"))
            continue
        before = len(problems)
        uid = _owner(raw, "uid", DEFAULT_FILE_UID, path, problems)
        gid = _owner(raw, "gid", DEFAULT_FILE_GID, path, problems)
        mode = _mode(raw, path, problems)
        full = place(source, target or "", f"{path}.target", problems)
        if full is None or len(problems) > before:
            continue
        if ".." in full.split("/"):
            problems.append(TemplateError(f"{path}.target", f"must not contain \"..\", got "
                                                            f"{quote(target or source)}"))
            continue
        refs.append(FileRef(source, full, uid, gid, mode))
    return refs


def _secret_target(source: str, target: str, path: str, problems: Problems) -> str | None:
    # A relative target is a path under /run/secrets, as in Swarm; an absolute one is
    # taken as is (Docker 20.10 mounts it there too).
    return target if target.startswith("/") else f"{SECRETS_DIR}/{target or source}"


def _config_target(source: str, target: str, path: str, problems: Problems) -> str | None:
    if not target:
        return f"/{source}"
    if not target.startswith("/"):
        problems.append(TemplateError(path, f"must be an absolute path, got {quote(target)}; "
                                            f"write \"/{target}\" (where Docker puts a "
                                            "relative one)"))
        return None
    return target


def _secrets(template: Mapping[str, Any], problems: Problems) -> list[FileRef]:
    return _file_refs(template, "secrets", _secret_target, problems)


def secrets(template: Mapping[str, Any]) -> list[FileRef]:
    """Secrets to mount; ``target`` is a full path, ``/run/secrets/<name>`` by default."""
    return _run(_secrets, template)


def _configs(template: Mapping[str, Any], problems: Problems) -> list[FileRef]:
    return _file_refs(template, "configs", _config_target, problems)


def configs(template: Mapping[str, Any]) -> list[FileRef]:
    """Configs to mount; ``target`` is absolute, ``/<name>`` by default, as in Swarm."""
    return _run(_configs, template)


def _targets(template: Mapping[str, Any], problems: Problems) -> None:
    """No two mounts, secrets or configs at the same path: Docker refuses the container
    ("Duplicate mount point"), so admission refuses the service."""
    seen: dict[str, str] = {}
    found: list[tuple[str, str]] = []
    quiet: Problems = []  # each reader reports its own problems; only clashes here
    for i, m in enumerate(_mounts(template, quiet)):
        found.append((f"{_field('mounts')}[{i}].target", m.target))
    for name, reader in (("secrets", _secrets), ("configs", _configs)):
        items = template.get(name)
        for i, raw in enumerate(items if isinstance(items, list) else []):
            # One item at a time, so a field path keeps the item's own index.
            for ref in reader({name: [raw]}, quiet):
                found.append((f"{_field(name)}[{i}].target", ref.target))
    for path, target in found:
        norm = target.rstrip("/") or "/"
        if norm in seen:
            problems.append(TemplateError(path, f"{quote(target)} is already the target of "
                                                f"{seen[norm]}; give each a different "
                                                "target"))
        else:
            seen[norm] = path.removesuffix(".target")


def file_targets(template: Mapping[str, Any]) -> None:
    """TemplateError if two mounts, secrets or configs share a target."""
    _run(_targets, template)


# --- init, capabilities, sysctls, ulimits ----------------------------------------------

#: Linux's capabilities (capabilities(7)) by number, as ``CAP_`` names.
CAPABILITIES: Final = tuple(f"CAP_{name}" for name in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE"))
ALL_CAPABILITIES: Final = "ALL"
#: The kernel parameters a task may set: those a container's own network and IPC
#: namespaces scope (Docker's list); any other would change the whole node.
SYSCTL_PREFIXES: Final = ("net.", "fs.mqueue.")
SYSCTL_IPC: Final = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                     "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                     "kernel.shm_rmid_forced")
#: The resource limits Docker sets (``as`` is left out by Docker too); -1 is unlimited.
ULIMITS: Final = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                  "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
UNLIMITED: Final = -1


def normalize_capability(name: str) -> str:
    """``net_admin``, ``NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``all`` -> ``ALL`` (Docker's
    spelling rule; whether the name exists is :func:`capabilities`' check)."""
    name = name.strip().upper()
    return name if name == ALL_CAPABILITIES or name.startswith("CAP_") else f"CAP_{name}"


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """Capabilities to add to and drop from the runtime's default set, normalised and
    sorted. ``ALL`` in either list stands for every capability; a capability both added
    and dropped is added (Docker's rule: ``capAdd`` wins)."""

    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()

    @property
    def drops_all(self) -> bool:
        return ALL_CAPABILITIES in self.drop


def _capability_list(template: Mapping[str, Any], name: str,
                     problems: Problems) -> set[str]:
    value = template.get(name)
    if value is None:
        return set()
    if not isinstance(value, list):
        problems.append(TemplateError(_field(name), f"must be a list of capability names, "
                                                    f"got {describe(value)}"))
        return set()
    found: set[str] = set()
    for index, raw in enumerate(value):
        path = f"{_field(name)}[{index}]"
        if not isinstance(raw, str) or not raw.strip():
            problems.append(TemplateError(path, f"must be a capability name such as "
                                                f"NET_ADMIN, got {describe(raw)}"))
            continue
        cap = normalize_capability(raw)
        if cap != ALL_CAPABILITIES and cap not in CAPABILITIES:
            # Matched without the common prefix, which makes every name look alike.
            hint = suggest(cap.removeprefix("CAP_"), [c[4:] for c in CAPABILITIES])
            problems.append(TemplateError(path, f"unknown capability {quote(raw)}"
                                                + (f" (did you mean {hint}?)" if hint else "")
                                                + "; write a name from capabilities(7) such"
                                                  " as NET_ADMIN (the CAP_ prefix is "
                                                  "optional), or ALL"))
            continue
        found.add(cap)
    return found


def effective_capabilities(add: set[str], drop: set[str]) -> Capabilities:
    """Docker's reading of ``--cap-add``/``--cap-drop``: ``ALL`` swallows the other names
    of its list, and a capability in both lists is only added."""
    if ALL_CAPABILITIES in add:
        add = {ALL_CAPABILITIES}
    if ALL_CAPABILITIES in drop:
        drop = {ALL_CAPABILITIES}
    return Capabilities(tuple(sorted(add)), tuple(sorted(drop - add)))


def _capabilities(template: Mapping[str, Any], problems: Problems) -> Capabilities:
    return effective_capabilities(_capability_list(template, "capAdd", problems),
                                  _capability_list(template, "capDrop", problems))


def capabilities(template: Mapping[str, Any]) -> Capabilities:
    """``capAdd`` and ``capDrop``, normalised (``CAP_`` prefix) and checked against
    Linux's list."""
    return _run(_capabilities, template)


def _init(template: Mapping[str, Any], problems: Problems) -> bool | None:
    value = template.get("init")
    if value is None or isinstance(value, bool):
        return value
    problems.append(TemplateError(_field("init"), f"must be true or false, got "
                                                  f"{describe(value)}"))
    return None


def init(template: Mapping[str, Any]) -> bool | None:
    """Run an init process as the task's pid 1 (it reaps zombies and passes signals on);
    None leaves it to the runtime's default (dockerd's ``--init``, off unless set)."""
    return _run(_init, template)


def sysctl_allowed(key: str) -> bool:
    """Is ``key`` a kernel parameter scoped to the task's own namespaces?"""
    return key.startswith(SYSCTL_PREFIXES) or key in SYSCTL_IPC


_SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")


def _sysctls(template: Mapping[str, Any], problems: Problems) -> dict[str, str]:
    value = template.get("sysctls")
    path = _field("sysctls")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(TemplateError(path, f"must be a mapping of kernel parameters to "
                                            f"values, got {describe(value)}"))
        return {}
    found: dict[str, str] = {}
    for key, raw in value.items():
        where = child(path, str(key))
        if not isinstance(key, str) or not _SYSCTL_KEY.match(key):
            problems.append(TemplateError(where, "must be a kernel parameter written with "
                                                 "dots, such as net.core.somaxconn"))
        elif not sysctl_allowed(key):
            problems.append(TemplateError(where, f"{key} is not namespaced: setting it would "
                                                 "change the whole node. A task may set net.*"
                                                 ", fs.mqueue.* and the IPC parameters "
                                                 + ", ".join(SYSCTL_IPC)))
        elif isinstance(raw, bool) or not isinstance(raw, str | int | float):
            problems.append(TemplateError(where, f"must be a string or a number, got "
                                                 f"{describe(raw)}"))
        else:
            found[key] = str(raw)
    return found


def sysctls(template: Mapping[str, Any]) -> dict[str, str]:
    """Kernel parameters to set in the task's namespaces, values as text; only the
    namespaced ones (net.*, fs.mqueue.*, the IPC ones) are allowed."""
    return _run(_sysctls, template)


@dataclasses.dataclass(frozen=True)
class Ulimit:
    """One resource limit; ``soft`` and ``hard`` are -1 (``UNLIMITED``) or >= 0."""

    name: str
    soft: int
    hard: int


def _limit(raw: Any, path: str, problems: Problems) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < UNLIMITED:
        problems.append(TemplateError(path, f"must be a whole number >= 0, or -1 for "
                                            f"unlimited; got {describe(raw)}"))
        return None
    return raw


def _ulimits(template: Mapping[str, Any], problems: Problems) -> list[Ulimit]:
    value = template.get("ulimits")
    path = _field("ulimits")
    if value is None:
        return []
    if not isinstance(value, Mapping):
        problems.append(TemplateError(path, f"must be a mapping of limit names to {{soft, "
                                            f"hard}}, got {describe(value)}"))
        return []
    found: list[Ulimit] = []
    for name, raw in sorted(value.items(), key=lambda item: str(item[0])):
        where = child(path, str(name))
        if name not in ULIMITS:
            hint = suggest(str(name), ULIMITS)
            problems.append(TemplateError(where, f"unknown limit {quote(str(name))}"
                                                 + (f" (did you mean {hint}?)" if hint else "")
                                                 + "; one of " + ", ".join(ULIMITS)))
            continue
        if not isinstance(raw, Mapping) or "soft" not in raw or "hard" not in raw:
            problems.append(TemplateError(where, "must be {soft: N, hard: N} (-1 for "
                                                 "unlimited)"))
            continue
        soft = _limit(raw["soft"], f"{where}.soft", problems)
        hard = _limit(raw["hard"], f"{where}.hard", problems)
        if soft is None or hard is None:
            continue
        if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
            shown = "unlimited" if soft == UNLIMITED else str(soft)
            problems.append(TemplateError(where, f"the soft limit ({shown}) is above the hard "
                                                 f"limit ({hard}); the soft limit must be at "
                                                 "most the hard one"))
            continue
        found.append(Ulimit(str(name), soft, hard))
    return found


def ulimits(template: Mapping[str, Any]) -> list[Ulimit]:
    """Resource limits by name (``nofile``, ``nproc``...), sorted; soft <= hard."""
    return _run(_ulimits, template)


# --- everything at once ----------------------------------------------------------------

_READERS: Final[tuple[Callable[[Mapping[str, Any], Problems], object], ...]] = (
    _image, _command, _env, _labels, _workdir, _user, _hostname, _stop_signal, _stop_grace,
    _mounts, _healthcheck, _resources, _secrets, _configs, _targets, _init, _capabilities,
    _sysctls, _ulimits,
)


def problems(template: Mapping[str, Any]) -> list[TemplateError]:
    """Every refusal any accessor would raise for this template, in field order: a
    template without problems reads without error through every accessor."""
    found: Problems = []
    for reader in _READERS:
        reader(template, found)
    return found
