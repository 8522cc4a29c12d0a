"""``swctl diff -f FILE``: what ``apply`` would change, as a unified diff.

It runs apply's own admission and planning, so the "after" side is exactly what apply
would write (defaults filled in, live status kept) and a clean diff guarantees apply
reports ``unchanged``. Both sides are rendered as YAML without the fields the server
owns (status, resourceVersion, uid, timestamps, generation), which would otherwise show
up as noise in every diff. Exit codes follow kubectl: 0 no differences, 1 differences,
2 (or more) the diff itself failed.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from rich.text import Text

from shoal.cli import apply, common, console, keyring, manifests, printers, redact
from shoal.crds import resource

SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp",
                 "deletionTimestamp")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff", parents=parents, help="show what apply would change",
        description="Unified diff between the live objects and what `swctl apply` would "
                    "write. Exit status: 0 no differences, 1 differences, 2 error.")
    apply.add_file_flags(p)
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace for objects that do not name one (default: default)")
    p.set_defaults(func=run, error_code=2)


def comparable(obj: resource.Resource | None) -> str:
    """The YAML a diff compares: the object minus server-owned fields, and a secret's or
    config's value as its size and digest (a diff is printed: a changed value shows as
    a changed digest, never as itself)."""
    if obj is None:
        return ""
    data = redact.hidden(obj).to_dict()
    data.pop("status", None)
    for field in SERVER_FIELDS:
        data["metadata"].pop(field, None)
    return printers.to_yaml(data) + "\n"


def diff_text(planned: apply.Planned) -> str:
    info, obj = planned.admitted.info, planned.desired
    ref = common.key_ref(info, obj.name, obj.namespace)
    before = comparable(planned.live).splitlines(keepends=True)
    after = comparable(planned.desired).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, fromfile=f"live/{ref}",
                                        tofile=f"applied/{ref}"))


def _colour(text: str) -> str:
    # Only for terminals: red removals, green additions, as `git diff` shows them.
    out = Text()
    for line in text.splitlines(keepends=True):
        if line.startswith(("---", "+++")):
            out.append(line, style="bold")
        elif line.startswith("-"):
            out.append(line, style="red")
        elif line.startswith("+"):
            out.append(line, style="green")
        elif line.startswith("@@"):
            out.append(line, style="cyan")
        else:
            out.append(line)
    term = console.stdout_console()
    with term.capture() as cap:
        term.print(out, end="")
    return cap.get()


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    docs = manifests.load(args.filename, args.recursive)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        admitted = apply.admit_documents(registry, docs, args.namespace,
                                         keyring.Source.of(opts))
        planned = await apply.plan(store, admitted)
    changed = False
    for p in planned:
        text = diff_text(p)
        if text:
            changed = True
            console.out(_colour(text) if console.stdout_is_tty() else text)
    return 1 if changed else 0
