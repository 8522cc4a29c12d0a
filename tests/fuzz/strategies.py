"""Hypothesis strategies for every input surface, shared by the fuzz tests and bench/fuzz.py.

They are structure-aware: each starts from a valid input (an object of every built-in
kind, a user CRD and an object of it, the Services and Networks the compose corpus
converts to, the corpus's stack files, the argparse surface of every verb) and mutates
it a few times — a wrong type, a huge or negative number, unicode, deep nesting, a key
dropped or added, a name shared by two documents. Mostly-valid input reaches the deep
checks (semantics, the plan, the converter) that random noise never gets past; the
hostile values make sure the shallow ones hold too.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

CORPUS = Path("/work/shared/corpus")

WEBSITE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "websites.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"kind": "Website", "plural": "websites", "singular": "website",
                       "shortNames": ["ws"]},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {
                               "type": "object",
                               "properties": {"spec": {
                                   "type": "object", "required": ["domain"],
                                   "properties": {
                                       "domain": {"type": "string",
                                                  "pattern": "^[a-z0-9.-]+$"},
                                       "replicas": {"type": "integer", "minimum": 1,
                                                    "default": 2}}}}}}}]}}

_HAND_SEEDS: list[dict[str, Any]] = [
    {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
     "spec": {"replicas": 3, "template": {"image": "busybox", "command": ["sleep", "1d"],
                                           "env": {"A": "1"}},
              "endpoint": {"ports": [{"target": 80, "published": 8080}]},
              "updateConfig": {"parallelism": 1, "delay": "1s", "order": "start-first"}}},
    {"apiVersion": "shoal.io/v1", "kind": "Service",
     "metadata": {"name": "agent", "namespace": "mon", "labels": {"tier": "ops"}},
     "spec": {"mode": "global", "template": {"image": "busybox"}}},
    {"apiVersion": "shoal.io/v1", "kind": "Network", "metadata": {"name": "backend"},
     "spec": {"driver": "overlay", "subnet": "10.77.0.0/24", "attachable": True}},
    {"apiVersion": "shoal.io/v1", "kind": "Secret", "metadata": {"name": "db-pass"},
     "spec": {"data": "aHVudGVyMg=="}},
    {"apiVersion": "shoal.io/v1", "kind": "Config", "metadata": {"name": "nginx-conf"},
     "spec": {"data": "c2VydmVyIHt9"}},
    {"apiVersion": "shoal.io/v1", "kind": "Node", "metadata": {"name": "node-1"},
     "spec": {"availability": "drain", "role": "worker"}},
    {"apiVersion": "shoal.io/v1", "kind": "Task", "metadata": {"name": "web.1.abc"},
     "spec": {"serviceName": "web", "slot": 1, "template": {"image": "busybox"},
              "desiredState": "running"}},
    {"apiVersion": "shoal.io/v1", "kind": "Event", "metadata": {"name": "web.1"},
     "spec": {"type": "Normal", "reason": "Created", "message": "made",
              "involvedObject": {"kind": "Service", "name": "web"}}},
    # With status, as the store holds them: what describe and get read back.
    {"apiVersion": "shoal.io/v1", "kind": "Service",
     "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 2,
                  "creationTimestamp": "2026-01-01T00:00:00Z",
                  "annotations": {"shoal.io/change-cause": "swctl apply"},
                  "ownerReferences": [{"kind": "Stack", "name": "s", "uid": "u0"}]},
     "spec": {"replicas": 1, "template": {"image": "busybox"}},
     "status": {"conditions": [{"type": "Valid", "status": "True", "reason": "Ok",
                                "message": "fine",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "update": {"state": "completed", "startedAt": "2026-01-01T00:00:00Z",
                           "updatedTasks": 1, "totalTasks": 1, "message": "done"},
                "revisions": [{"revision": 1, "generation": 1, "changeCause": "x",
                               "spec": {"replicas": 1}}],
                "observedGeneration": 2}},
    {"apiVersion": "shoal.io/v1", "kind": "Task",
     "metadata": {"name": "web.1.abc", "namespace": "default",
                  "labels": {"shoal.io/service": "web"}},
     "spec": {"serviceName": "web", "slot": 1, "nodeName": "n1",
              "template": {"image": "busybox"}, "desiredState": "running"},
     "status": {"state": "running", "timestamp": "2026-01-01T00:00:00Z",
                "containerStatus": {"pid": 5}, "message": "started"}},
    {"apiVersion": "shoal.io/v1", "kind": "Node", "metadata": {"name": "n1"},
     "spec": {"availability": "active", "role": "manager"},
     "status": {"state": "ready", "addr": "10.0.0.1", "platform": "linux",
                "resources": {"cpus": 4, "memory": 8589934592}, "engineVersion": "1"}},
    WEBSITE_CRD,
    {"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "blog"},
     "spec": {"domain": "blog.example.com", "replicas": 2}},
]


def _corpus_files() -> list[Path]:
    return sorted((CORPUS / "stacks").glob("*.yml"))


@functools.cache
def compose_seeds() -> list[dict[str, Any]]:
    """The corpus's stack files as data (every one is valid YAML, accepted or not)."""
    out = []
    for path in _corpus_files():
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            out.append(data)
    return out


@functools.cache
def manifest_seeds() -> list[dict[str, Any]]:
    """A valid object of every kind, plus what the corpus's accepted stacks convert to."""
    from shoal.compose import ComposeError, convert_stack, load_project

    seeds = [copy.deepcopy(s) for s in _HAND_SEEDS]
    for path in _corpus_files():
        try:
            seeds.extend(convert_stack(load_project([path], {}), "st"))
        except ComposeError:
            continue
    return json.loads(json.dumps(seeds))  # plain JSON data: no YAML dates or tuples


# --- hostile values ---

_WEIRD_TEXT = ["", " ", "-", "a" * 300, "web\n", "ünïcødé", "名前", "\x00", "\u202e",
               "../../etc", "${HOME}", "$$", "{{x}}", "0", "-1", "1e309", "nan", "true",
               "null", "~", "1s", "-5s", "99999999999h", "10.0.0.0/8", "0.0.0.0/0",
               "::1/128", "web.1.abc", "default", "a/b", "*"]
_NUMBERS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 1.5, -0.0]

leaf: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from(_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.sampled_from(_WEIRD_TEXT),
)
"""A JSON scalar, leaning towards values near a boundary."""

json_value: st.SearchStrategy[Any] = st.recursive(
    leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                  st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def nested(depth: int, value: Any = 1) -> Any:
    """``depth`` levels of alternating lists and maps around ``value``."""
    for i in range(depth):
        value = [value] if i % 2 else {"x": value}
    return value


# --- structure-aware mutation ---

Slot = tuple[Any, Any]  # (container, key or index)


def _slots(value: Any, limit: int = 400) -> list[Slot]:
    """Every (container, key) in ``value``, breadth first, at most ``limit``."""
    out: list[Slot] = []
    todo = [value]
    while todo and len(out) < limit:
        node = todo.pop(0)
        items: Iterator[tuple[Any, Any]]
        if isinstance(node, dict):
            items = iter(list(node.items()))
        elif isinstance(node, list):
            items = iter(list(enumerate(node)))
        else:
            continue
        for key, child in items:
            out.append((node, key))
            todo.append(child)
    return out


def _containers(value: Any) -> list[Any]:
    out = [value] if isinstance(value, dict | list) else []
    out += [c[k] for c, k in _slots(value) if isinstance(c[k], dict | list)]
    return out


@st.composite
def _mutate_once(draw: st.DrawFn, doc: Any) -> Any:
    """One change somewhere in ``doc`` (changed in place; returned for chaining)."""
    slots = _slots(doc)
    op = draw(st.sampled_from(("replace", "replace", "drop", "add", "wrap", "nest",
                               "stringify", "number")))
    if op == "add" or not slots:
        containers = _containers(doc)
        if not containers:
            return draw(json_value)
        target = draw(st.sampled_from(containers))
        if isinstance(target, dict):
            target[draw(st.one_of(st.text(max_size=10), st.sampled_from(
                ["name", "kind", "spec", "status", "metadata", "image", "replicas",
                 "namespace", "labels", "ports", "x-extra"])))] = draw(json_value)
        else:
            target.append(draw(json_value))
        return doc
    container, key = draw(st.sampled_from(slots))
    value = container[key]
    if op == "replace":
        container[key] = draw(json_value)
    elif op == "drop":
        del container[key]
    elif op == "wrap":
        container[key] = draw(st.sampled_from(([value], {"value": value})))
    elif op == "nest":
        container[key] = nested(draw(st.sampled_from((3, 30, 100))), value)
    elif op == "stringify":
        container[key] = json.dumps(value) if not isinstance(value, str) else value * 2
    elif op == "number":
        container[key] = draw(st.sampled_from(_NUMBERS))
    return doc


@st.composite
def mutated(draw: st.DrawFn, seed: Any, max_changes: int = 4) -> Any:
    doc = copy.deepcopy(seed)
    # Half the cases change at most one thing, so the deep checks get reached too.
    changes = draw(st.sampled_from((0, 0, 0, 1, 1, 2, max_changes // 2, max_changes)))
    for _ in range(changes):
        doc = draw(_mutate_once(doc))
    return doc


def manifest() -> st.SearchStrategy[Any]:
    """One manifest document: a seed of some kind, mutated (sometimes not at all)."""
    return st.sampled_from(manifest_seeds()).flatmap(mutated)


@st.composite
def manifest_set(draw: st.DrawFn) -> list[Any]:
    """One to four documents for one apply, sometimes two with the same name."""
    docs = draw(st.lists(manifest(), min_size=1, max_size=3))
    if len(docs) > 1 and draw(st.booleans()):
        twin = copy.deepcopy(docs[0])
        docs.append(draw(mutated(twin, 1)))
    return docs


def compose_file() -> st.SearchStrategy[Any]:
    """A corpus stack file, mutated (as data), or hostile YAML text (a str)."""
    return st.one_of(st.sampled_from(compose_seeds()).flatmap(lambda s: mutated(s, 5)),
                     st.sampled_from(compose_seeds()).flatmap(hostile_text))


def manifest_input() -> st.SearchStrategy[Any]:
    """Documents for one apply (a list), or hostile YAML text (a str)."""
    # Three in four are documents: most hostile text is refused before admission.
    return st.one_of(manifest_set(), manifest_set(), manifest_set(),
                     manifest_set().flatmap(hostile_text))


# --- hostile YAML text ---

def _bomb(width: int, levels: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + f"\nbomb: *a{levels}"


@st.composite
def hostile_text(draw: st.DrawFn, seed: Any) -> str:
    """``seed`` as YAML with something hostile in or around it: runaway nesting, an alias
    bomb, a self-containing alias, tags PyYAML's safe loader refuses, tabs, bad bytes,
    duplicate keys, a truncation, or random text."""
    text = yaml.safe_dump_all(seed if isinstance(seed, list) else [seed],
                              allow_unicode=True, sort_keys=False)
    choice = draw(st.integers(0, 8))
    if choice == 0:
        depth = draw(st.sampled_from((60, 70, 500, 5000)))
        opener = draw(st.sampled_from(("[", "{a: ")))
        closer = "]" if opener == "[" else "}"
        return text + f"\nextra: {opener * depth}{closer * depth}\n"
    if choice == 1:
        width, levels = draw(st.sampled_from(((2, 3), (5, 5), (6, 6), (10, 9), (20, 8))))
        return text + "\n" + _bomb(width, levels)
    if choice == 2:
        return text + "\nloop: &loop {self: *loop}\n"
    if choice == 3:
        return text + draw(st.sampled_from((
            "\nx: !!python/object:os.system ls\n", "\nx: !!binary AAA=\n",
            "\nx: !custom 1\n", "\nx: *undefined\n", "\n\tindent: tab\n",
            "\nx: 2024-01-01\n", "\nx: 2024-01-01 10:00:00\n", "\n? [a, b]\n: c\n",
            "\n<<: *nothing\n", "\nkind: Service\nkind: Node\n", "\n...\n---\n")))
    if choice == 4:
        cut = draw(st.integers(0, max(0, len(text) - 1)))
        return text[:cut]
    if choice == 5:
        return draw(st.text(max_size=200))
    if choice == 6:
        return draw(st.binary(max_size=200)).decode("latin-1")
    if choice == 7:
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(("  - x", "a: b: c", "- [", "'", '"\\q"',
                                               "%YAML 9.9", "&a x", "{", ": x"))))
        return "\n".join(lines)
    return text * draw(st.integers(2, 3))


# --- CLI arguments ---

# Flags the generator leaves out: help (prints and exits 0, fine but uninteresting), the
# ones that point swctl at another cluster or key prefix (a fuzzed ``--prefix /`` would
# reach other tests' objects) and the ones that follow output forever.
NOT_SAMPLED = frozenset({"-h", "--help", "--etcd", "--etcd-ca", "--etcd-cert", "--etcd-key",
                         "--prefix", "--data-dir", "--keyring", "-w", "--watch", "-f",
                         "--follow"})

# Verbs that start processes, change etcd membership or this machine's files, or stream
# forever (`dashboard` serves until Ctrl-C): not fuzzed against a shared test etcd.
UNSAFE_VERBS = frozenset({"init", "join", "leave", "up", "down", "controller-manager",
                          "agent", "role-watch", "logs", "promote", "demote", "dashboard"})


def safe_verb(path: tuple[str, ...]) -> bool:
    return not (set(path) & UNSAFE_VERBS)


@functools.cache
def verb_surface() -> list[tuple[tuple[str, ...], tuple[str, ...], int]]:
    """(verb path, its option strings, how many positionals) for every leaf verb."""
    from shoal.cli import main

    out: list[tuple[tuple[str, ...], tuple[str, ...], int]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))
                return
        options = tuple(o for a in parser._actions for o in a.option_strings
                        if o not in NOT_SAMPLED)
        positionals = sum(1 for a in parser._actions if not a.option_strings)
        out.append((path, options, positionals))
    walk(main.build_parser(), ())
    return out


_ARG_VALUES = ["web", "services", "service/web", "svc", "nodes", "tasks", "-", "0", "-3",
               "1e3", "99999999999999999999", "x=y", "a=b=c", "=", ",", "nan", "1s", "-1s",
               "json", "yaml", "wide", "name", "web=5", "web=-1", "web=x", "8080:80",
               "80:80/udp", "65536:1", "0:0", "src=a,target=/b", "type=volume", "", " ",
               "ünï", "名前", "--", "node.role==manager", "node.labels.x!=y", "spread=x",
               "/nonexistent/file.yaml", "-n", "-o", "--flag", "@", "%s", "{}", "[]"]


@st.composite
def cli_argv(draw: st.DrawFn, allowed: Callable[[tuple[str, ...]], bool],
             extra: tuple[str, ...] = ()) -> list[str]:
    """A random command line for one verb: random flags of its own, random values."""
    surface = [s for s in verb_surface() if allowed(s[0])]
    path, options, positionals = draw(st.sampled_from(surface))
    argv = list(path)
    words = st.one_of(st.sampled_from(_ARG_VALUES), st.text(max_size=12))
    for _ in range(draw(st.integers(0, 5))):
        choice = draw(st.integers(0, 3))
        if choice == 0 or not options:
            argv.append(draw(words))
        elif choice == 1:
            argv.append(draw(st.sampled_from(options)))
        else:
            argv += [draw(st.sampled_from(options)), draw(words)]
    for _ in range(draw(st.integers(0, positionals))):
        argv.insert(len(path) + draw(st.integers(0, len(argv) - len(path))), draw(words))
    if "--detach" in options:
        # Nothing converges here (no controllers run). Right after the verb: after an
        # image, ``service create`` takes every word as the command's, as Docker does.
        argv.insert(len(path), "--detach")
    return [*argv, *extra]


# --- bytes for etcd ---

def _shape_of_kind(draw: st.DrawFn, kind: str) -> Any:
    seeds = [s for s in manifest_seeds() if s["kind"] == kind] or manifest_seeds()
    return draw(mutated(draw(st.sampled_from(seeds)), 4))


@st.composite
def etcd_value(draw: st.DrawFn, kind: str, name: str, namespace: str | None) -> bytes:
    """What someone might write at ``kind``'s key for ``name``: noise, broken JSON, JSON
    of the wrong shape, an object naming another kind or name, or a mutated valid one."""
    # Half of them well-formed enough to decode: those reach the controllers and swctl.
    choice = draw(st.sampled_from((0, 1, 2, 3, 4, 5, 5, 5, 5, 5)))
    if choice == 0:
        return draw(st.binary(max_size=64))
    if choice == 1:
        text = json.dumps(_shape_of_kind(draw, kind))
        return text[: draw(st.integers(0, max(0, len(text) - 1)))].encode()
    if choice == 2:
        return json.dumps(draw(json_value)).encode()
    doc = _shape_of_kind(draw, kind)
    if isinstance(doc, dict):
        meta = doc.get("metadata")
        if isinstance(meta, dict) and choice != 3:
            meta["name"] = name
            if namespace is not None:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
        if choice == 4 and draw(st.booleans()):
            doc["kind"] = draw(st.sampled_from(["Service", "Task", "Node", "Website", "x"]))
    return json.dumps(doc).encode()
