"""The compose loader and converter held to Docker 20.10's own output on /work/shared/corpus.

Every stack file Docker accepted is converted and compared, field by field, with the service
specs ``docker stack deploy`` made from it (``expected/NNN.json``); every file Docker
rejected must be rejected. Both sides are reduced to the same plain view per field, with
Swarm's defaults filled in (Shoal's schema defaults are Swarm's), so a field left out on one
side and defaulted on the other compares equal. The per-field match rate is printed
(``pytest -s``) and held at the rate reached, so it can only go up.
"""

import copy
import csv
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.compose import ComposeError, convert_stack, load_project
from shoal.crds import admission, kinds
from shoal.crds.units import parse_duration

CORPUS = Path("/work/shared/corpus")
SEC = 1_000_000_000

# The rate each field has reached (accepted files' services); raise these as fields improve.
FIELDS = ("mode", "replicas", "image", "entrypoint/command", "env", "workdir", "user",
          "hostname", "constraints", "preferences", "max per node", "restart policy",
          "update config", "rollback config", "resources", "endpoint mode", "ports",
          "networks", "health check", "labels", "container labels", "mounts", "secrets",
          "configs", "stop grace period", "init", "capabilities", "sysctls", "ulimits")
REACHED: dict[str, float] = dict.fromkeys(FIELDS, 1.0)


def _rows() -> list[dict[str, str]]:
    with open(CORPUS / "results.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _owner(file: dict[str, Any]) -> tuple[str, str, int]:
    """A file reference's owner and mode as Docker stored them (its defaults filled)."""
    return (file.get("UID", "0"), file.get("GID", "0"), file.get("Mode", 0o444))


def _ns(value: Any) -> int | None:
    return None if value is None else round(parse_duration(value) * SEC)


def _prepare(row: dict[str, str], root: Path) -> tuple[Path, dict[str, str], Path]:
    """The stack file in a scratch dir with its dummy files, as the corpus was made."""
    stack_dir = root / "scratch" / row["file"][:3]
    dummy_dir = root / "dummy"
    stack_dir.mkdir(parents=True)
    dummy_dir.mkdir()
    shutil.copy(CORPUS / "stacks" / row["file"], stack_dir / row["file"])

    def expand(text: str) -> str:
        return text.replace("${STACK_DIR}", str(stack_dir)).replace("${DUMMY_DIR}",
                                                                     str(dummy_dir))

    for dummy in row["dummy_files"].split():
        path = Path(expand(dummy))
        path = path if path.is_absolute() else stack_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("" if "env" in path.name else "dummy\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "PWD": str(stack_dir)}
    env_file = CORPUS / "expected" / f"{row['file'][:3]}.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = expand(value)
    return stack_dir / row["file"], env, stack_dir


# --- the two sides, reduced to one view per field ---------------------------------------

def _docker_view(svc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    spec = svc["Spec"]
    task = spec["TaskTemplate"]
    cs = task["ContainerSpec"]
    place = task.get("Placement") or {}
    rp = task.get("RestartPolicy") or {}
    res = task.get("Resources") or {}
    hc = cs.get("Healthcheck")
    mode = "global" if "Global" in spec["Mode"] else "replicated"

    def upd(c: dict[str, Any] | None) -> tuple[Any, ...]:
        c = c or {}
        return (c.get("Parallelism", 1), c.get("Delay", 0), c.get("FailureAction", "pause"),
                c.get("Monitor", 5 * SEC), c.get("MaxFailureRatio", 0),
                c.get("Order", "stop-first"))

    def lim(part: dict[str, Any] | None) -> tuple[Any, ...]:
        part = part or {}
        return (part.get("NanoCPUs") or 0, part.get("MemoryBytes") or 0)

    return {
        "mode": mode,
        "replicas": spec["Mode"]["Replicated"]["Replicas"] if mode == "replicated" else None,
        "image": cs["Image"],
        "entrypoint/command": (cs.get("Command"), cs.get("Args")),
        "env": dict(sorted(e.split("=", 1) for e in cs.get("Env") or [] if "=" in e)),
        "workdir": cs.get("Dir") or None,
        "user": cs.get("User") or None,
        "hostname": cs.get("Hostname") or None,
        "constraints": sorted(place.get("Constraints") or []),
        "preferences": [p["Spread"]["SpreadDescriptor"] for p in place.get("Preferences") or []],
        "max per node": place.get("MaxReplicas") or 0,
        "restart policy": (rp.get("Condition", "any"), rp.get("Delay", 5 * SEC),
                           rp.get("MaxAttempts", 0), rp.get("Window", 0)),
        "update config": upd(spec.get("UpdateConfig")),
        "rollback config": upd(spec.get("RollbackConfig")),
        "resources": (lim(res.get("Limits")), lim(res.get("Reservations"))),
        "endpoint mode": (spec.get("EndpointSpec") or {}).get("Mode", "vip"),
        "ports": sorted((p["TargetPort"], p.get("PublishedPort"), p.get("Protocol", "tcp"),
                         p.get("PublishMode", "ingress"))
                        for p in (spec.get("EndpointSpec") or {}).get("Ports") or []),
        "networks": sorted((names.get(n["Target"], n["Target"]), tuple(n.get("Aliases") or ()))
                           for n in task.get("Networks") or []),
        "health check": None if hc is None else (
            hc.get("Test"), hc.get("Interval"), hc.get("Timeout"), hc.get("StartPeriod"),
            hc.get("Retries")),
        "labels": spec.get("Labels") or {},
        "container labels": cs.get("Labels") or {},
        "mounts": sorted((m["Type"], m.get("Source"), m["Target"], bool(m.get("ReadOnly")))
                         for m in cs.get("Mounts") or []),
        "secrets": sorted((s["SecretName"], s["File"]["Name"], *_owner(s["File"]))
                          for s in cs.get("Secrets") or []),
        # A relative file name lands at the container's root (the daemon's rule).
        "configs": sorted((c["ConfigName"], "/" + c["File"]["Name"].lstrip("/"),
                           *_owner(c["File"])) for c in cs.get("Configs") or []),
        "stop grace period": cs.get("StopGracePeriod", 10 * SEC),
        "init": cs.get("Init"),
        "capabilities": (cs.get("CapabilityAdd") or [], cs.get("CapabilityDrop") or []),
        "sysctls": cs.get("Sysctls") or {},
        "ulimits": {u["Name"]: (u["Soft"], u["Hard"]) for u in cs.get("Ulimits") or []},
    }


def _shoal_view(obj: dict[str, Any], stack_dir: Path) -> dict[str, Any]:
    spec = obj["spec"]
    t = spec["template"]
    place = spec.get("placement") or {}
    rp = spec.get("restartPolicy") or {}
    res = t.get("resources") or {}
    hc = t.get("healthcheck")
    mode = spec.get("mode", "replicated")

    def upd(c: dict[str, Any] | None) -> tuple[Any, ...]:
        c = c or {}
        return (c.get("parallelism", 1), _ns(c.get("delay", 0)), c.get("failureAction", "pause"),
                _ns(c.get("monitor", "5s")), c.get("maxFailureRatio", 0),
                c.get("order", "stop-first"))

    def lim(part: dict[str, Any] | None) -> tuple[Any, ...]:
        part = part or {}
        return (round(part.get("cpus", 0) * SEC), part.get("memory", 0))

    dummy_dir = str(stack_dir.parent.parent / "dummy")

    def norm(text: str) -> str:
        return text.replace(str(stack_dir), "${STACK_DIR}").replace(dummy_dir, "${DUMMY_DIR}")

    def src(m: dict[str, Any]) -> Any:
        s = m.get("source")
        return norm(s) if s and m["type"] == "bind" else s

    return {
        "mode": mode,
        "replicas": spec.get("replicas", 1) if mode == "replicated" else None,
        "image": t["image"],
        "entrypoint/command": (t.get("entrypoint"), t.get("command")),
        "env": {k: norm(v) for k, v in sorted((t.get("env") or {}).items())},
        "workdir": t.get("workdir"),
        "user": t.get("user"),
        "hostname": t.get("hostname"),
        "constraints": sorted(place.get("constraints") or []),
        "preferences": [p["spread"] for p in place.get("preferences") or []],
        "max per node": place.get("maxReplicasPerNode", 0),
        "restart policy": (rp.get("condition", "any"), _ns(rp.get("delay", "5s")),
                           rp.get("maxAttempts", 0), _ns(rp.get("window", 0))),
        "update config": upd(spec.get("updateConfig")),
        "rollback config": upd(spec.get("rollbackConfig")),
        "resources": (lim(res.get("limits")), lim(res.get("reservations"))),
        "endpoint mode": (spec.get("endpoint") or {}).get("mode", "vip"),
        "ports": sorted((p["target"], p.get("published"), p.get("protocol", "tcp"),
                         p.get("mode", "ingress"))
                        for p in (spec.get("endpoint") or {}).get("ports") or []),
        "networks": sorted((n, ()) if isinstance(n, str) else (n["name"],
                                                                 tuple(n.get("aliases") or ()))
                           for n in spec.get("networks") or []),
        "health check": None if hc is None else (
            hc.get("test"), _ns(hc.get("interval")), _ns(hc.get("timeout")),
            _ns(hc.get("startPeriod")), hc.get("retries")),
        "labels": obj["metadata"].get("labels") or {},
        "container labels": t.get("labels") or {},
        "mounts": sorted((m["type"], src(m), m["target"], bool(m.get("readOnly")))
                         for m in t.get("mounts") or []),
        "secrets": sorted((s["source"], s.get("target", s["source"]),
                           s.get("uid", "0"), s.get("gid", "0"), s.get("mode", 0o444))
                          for s in t.get("secrets") or []),
        "configs": sorted((c["source"], c.get("target", "/" + c["source"]),
                           c.get("uid", "0"), c.get("gid", "0"), c.get("mode", 0o444))
                          for c in t.get("configs") or []),
        "stop grace period": _ns(t.get("stopGracePeriod", "10s")),
        "init": t.get("init"),
        "capabilities": (t.get("capAdd") or [], t.get("capDrop") or []),
        "sysctls": t.get("sysctls") or {},
        "ulimits": {k: (v["soft"], v["hard"]) for k, v in (t.get("ulimits") or {}).items()},
    }


def _network_names(num: str) -> Callable[[str], str]:
    prefixes = {}
    path = CORPUS / "expected" / f"{num}.networks.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        net = json.loads(line)
        prefixes[net["ID"]] = net["Name"]
    ext_path = CORPUS / "expected" / f"{num}.external.json"
    external = json.loads(ext_path.read_text()).get("networks", {}) if ext_path.exists() else {}
    by_id = {v: k for k, v in external.items()}

    def name(full: str) -> str:
        return by_id.get(full) or prefixes.get(full[:12], full)

    return name


# Where Shoal differs on purpose: Docker accepted these files, whose networks ask for
# `encrypted`, which Shoal's overlay cannot do; Shoal refuses them unless the caller allows
# unencrypted networks (then they convert, and are compared, like the rest).
ENCRYPTED = ("002", "010", "033")


@functools.cache
def _outcomes(root: str) -> dict[str, Any]:
    """file -> (accepted by Docker?, Shoal's error or None, objects, stack dir); files in
    ENCRYPTED are converted with unencrypted networks allowed, their default refusal kept
    in ``_refused_encrypted``."""
    out: dict[str, Any] = {}
    for row in _rows():
        num = row["file"][:3]
        path, env, stack_dir = _prepare(row, Path(root) / num)
        try:
            objects = convert_stack(load_project([path], env), f"c{num}")
            error = None
        except ComposeError as exc:
            objects, error = [], str(exc)
            if "driver_opts.encrypted" in error:
                _refused_encrypted[num] = error
                objects = convert_stack(load_project([path], env), f"c{num}",
                                        allow_unencrypted=True)
                error = None
        out[row["file"]] = (row["accepted"].startswith("yes"), error, objects, stack_dir)
    return out


_refused_encrypted: dict[str, str] = {}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _outcomes(str(tmp_path_factory.mktemp("corpus")))


ACCEPTED = [r["file"] for r in _rows() if r["accepted"].startswith("yes")]
REJECTED = [r["file"] for r in _rows() if not r["accepted"].startswith("yes")]


# The kind of error Docker gave (README: compare the kind, not the text, since the daemon's
# errors name whichever service Go's map order created first).
REJECTION_KIND = {
    "021": "image reference must be provided",
    "023": "Additional property driver-opts is not allowed",
    "030": "IPAM driver overlay",
    "032": "cannot be used by swarm services",
    "035": "extends",
    "044": "deploy.labels must be a mapping",
    "051": "/share/swarm/secrets/",
    "054": "image reference must be provided",
    "055": 'undefined volume "graphrag_cache"',
    "059": "image reference must be provided",
    **{n: "unsupported Compose file version: 1.0" for n in ("034", "036", "049", "056",
                                                             "061", "064")},
}


@pytest.mark.parametrize("file", REJECTED)
def test_a_file_docker_rejected_is_rejected_for_the_same_reason(
    outcomes: dict[str, Any], file: str
) -> None:
    _, error, _, _ = outcomes[file]
    docker = (CORPUS / "expected" / f"{file[:3]}.error.txt").read_text()
    assert error is not None, f"{file} was accepted; Docker said: {docker}"
    assert REJECTION_KIND[file[:3]] in error, f"Docker said: {docker}"
    assert file in error, "the message names the file"


def test_every_file_docker_accepted_converts(outcomes: dict[str, Any]) -> None:
    failed = {f: outcomes[f][1] for f in ACCEPTED if outcomes[f][1] is not None}
    assert not failed
    # ... those asking for an encrypted overlay only once unencrypted networks are allowed.
    assert sorted(_refused_encrypted) == list(ENCRYPTED)
    assert all("Shoal does not encrypt overlay traffic" in e
               for e in _refused_encrypted.values())
    for file in ACCEPTED:
        expected = json.loads((CORPUS / "expected" / f"{file[:3]}.json").read_text())
        ours = [o["metadata"]["name"] for o in outcomes[file][2] if o["kind"] == "Service"]
        assert sorted(ours) == sorted(s["Spec"]["Name"] for s in expected), file


def test_every_object_of_an_accepted_file_passes_shoals_admission(
        outcomes: dict[str, Any]) -> None:
    # What stack deploy then writes must pass the schema and the semantic checks too: a
    # conversion that admission refuses would be a file Docker deploys and Shoal does not.
    # One difference on purpose: Docker creates 031's service with a relative bind target
    # ("dummy"), whose every task then fails to start; Shoal refuses it at deploy.
    registry = kinds.Registry.builtin()
    refused = {}
    for file in ACCEPTED:
        for obj in outcomes[file][2]:
            try:
                admission.admit(obj, registry, file)
            except admission.ValidationError as exc:
                refused[f"{file} {obj['kind']}/{obj['metadata']['name']}"] = str(exc)
    assert list(refused) == ["031-gesellix__docker-client.yml Service/c031_service"]
    assert 'mounts[0].target: must be an absolute path, got "dummy"' in "".join(
        refused.values())


def test_services_match_dockers_field_by_field(outcomes: dict[str, Any]) -> None:
    totals: dict[str, list[int]] = {}
    misses: dict[str, list[str]] = {}
    for file in ACCEPTED:
        _, _, objects, stack_dir = outcomes[file]
        num = file[:3]
        names = _network_names(num)
        expected = json.loads((CORPUS / "expected" / f"{num}.json").read_text())
        ours = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
        for svc in expected:
            want = _docker_view(svc, {n["Target"]: names(n["Target"]) for n in
                                      svc["Spec"]["TaskTemplate"].get("Networks") or []})
            mine = ours.get(svc["Spec"]["Name"])
            got = _shoal_view(mine, stack_dir) if mine else {}
            for field, value in want.items():
                hit = field in got and got[field] == value
                totals.setdefault(field, [0, 0])
                totals[field][0] += hit
                totals[field][1] += 1
                if not hit:
                    misses.setdefault(field, []).append(
                        f"{svc['Spec']['Name']}: docker {value!r} shoal {got.get(field)!r}")
    print("\nfield                  match   rate")
    rates = {}
    for field, (hit, total) in totals.items():
        rates[field] = hit / total
        print(f"{field:22} {hit:3}/{total:3} {100 * hit / total:6.1f} %")
    for field, lines in misses.items():
        print(f"\n-- {field} misses:")
        for line in lines[:8]:
            print("  ", line)
    for field, floor in REACHED.items():
        assert rates[field] >= floor, f"{field} fell to {rates[field]:.3f} from {floor}"


def test_the_stack_makes_the_networks_docker_made(outcomes: dict[str, Any]) -> None:
    for file in ACCEPTED:
        path = CORPUS / "expected" / f"{file[:3]}.networks.jsonl"
        want = sorted((n["Name"], n["Internal"] == "true", n["Labels"])
                      for n in map(json.loads, path.read_text().splitlines()))
        got = sorted((o["metadata"]["name"], bool(o["spec"].get("internal")),
                      ",".join(f"{k}={v}" for k, v in sorted(o["metadata"]["labels"].items())))
                     for o in outcomes[file][2] if o["kind"] == "Network")
        assert got == want, file


MUTANTS = [None, 5, "x", [], {}, True, ["a"], {"a": 1}, 1.5, "${UNSET}", "-1"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else [])
    for key, child in items:
        out += _paths(child, (*prefix, key))
    return out


@pytest.mark.parametrize("file", ACCEPTED[::5])
def test_a_corpus_file_with_a_value_of_the_wrong_type_is_refused_never_crashed_on(
    tmp_path: Path, file: str
) -> None:
    """Paths of the file (a fixed sample of 40), one at a time, set to values of other types:
    each load either succeeds or raises ComposeError (a clear refusal), never another
    exception. A wider run (every file, several seeds) found nothing more."""
    import random

    import yaml

    row = next(r for r in _rows() if r["file"] == file)
    path, env, _ = _prepare(row, tmp_path)
    original = yaml.safe_load(path.read_text())
    rng = random.Random(file)
    mutant_path = path.with_name("mutant.yml")
    paths = _paths({k: v for k, v in original.items() if k != "version"})
    for where in rng.sample(paths, min(40, len(paths))):
        data = copy.deepcopy(original)
        node = data
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = rng.choice(MUTANTS)
        mutant_path.write_text(yaml.safe_dump(data))
        try:
            convert_stack(load_project([mutant_path], env), "s")
        except ComposeError:
            pass
