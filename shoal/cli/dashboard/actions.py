"""What a button in the page does: the swctl command line it stands for, run in-process.

An action is turned into the argv a user would type (``scale web=3 -n default
--detach``, ``node drain n-1``, ``delete task web.1.x -n default``, ``rollout undo
service/web -n default -d``), parsed by swctl's own parser and run by the verb's own
function, with the dashboard's global options. So validation, compare-and-swap retries,
refusals and their wording are the verb's, with no second copy to drift: a page asking to
scale to -1 gets ``error: invalid replica count "-1" ...``, the line ``swctl scale
web=-1`` prints. The verb's result lines (``console.out``) and error lines
(``errors.error_lines``) are captured per action and returned to the page, with the
command itself, so a user can see, and repeat, what was done.

Values from the page only ever fill positions in that argv; a value that argparse would
read as a flag (``-...``) is refused before anything is parsed. Verbs that wait for
convergence are run detached: the page shows the convergence live.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
from collections.abc import Callable, Mapping
from typing import Any, Final

from shoal.cli import changecause, common, console, errors

NODE_VERBS: Final = ("drain", "pause", "activate")
ROLLOUT_VERBS: Final = ("pause", "resume", "undo")


class ActionError(ValueError):
    """A request the page should never send (unknown action, missing field)."""


@dataclasses.dataclass
class Outcome:
    """What the page shows after an action."""

    command: str  # the swctl command line it ran
    ok: bool
    output: list[str]  # result lines, as swctl prints on stdout
    errors: list[str]  # error lines, as swctl prints on stderr

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        raise ActionError(f'missing "{name}" in the action request')
    text = str(value)
    if text.startswith("-"):
        raise ActionError(f'"{name}" cannot start with "-": {text!r}')
    return text


def argv_for(body: Mapping[str, Any]) -> list[str]:
    """The swctl argv for one action request from the page."""
    action = body.get("action")
    if action == "scale":
        # The count goes in as typed: swctl's parser decides what a replica count is.
        replicas = body.get("replicas")
        count = "" if replicas is None or isinstance(replicas, bool) else str(replicas).strip()
        return ["scale", f"{_field(body, 'name')}={count}", "-n", _field(body, "namespace"),
                "--detach"]
    if action == "node" and body.get("verb") in NODE_VERBS:
        return ["node", str(body["verb"]), _field(body, "name")]
    if action == "delete-task":
        return ["delete", "task", _field(body, "name"), "-n", _field(body, "namespace")]
    if action == "rollout" and body.get("verb") in ROLLOUT_VERBS:
        argv = ["rollout", str(body["verb"]), f"service/{_field(body, 'name')}",
                "-n", _field(body, "namespace")]
        return [*argv, "--detach"] if body["verb"] == "undo" else argv
    raise ActionError(f"unknown action {body.get('action')!r} (verb {body.get('verb')!r}): "
                      "expected scale, node drain|pause|activate, delete-task or rollout "
                      "pause|resume|undo")


_PARSER: argparse.ArgumentParser | None = None


def _parser() -> argparse.ArgumentParser:
    global _PARSER
    if _PARSER is None:
        from shoal.cli import main  # main imports this package's command; load late

        _PARSER = main.build_parser()
    return _PARSER


async def run(argv: list[str], opts: common.GlobalOptions) -> Outcome:
    """Run ``swctl ARGV`` in this process as the user would from a shell."""
    command = changecause.command_line(argv)
    stderr = io.StringIO()
    try:
        # argparse reports a bad value by writing to stderr and exiting; it is plain
        # synchronous code, so swapping stderr here cannot catch another task's output.
        with contextlib.redirect_stderr(stderr):
            args = _parser().parse_args(argv)
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        return Outcome(command, False, [], lines or [f"error: cannot run {command}"])
    args.command_line = command  # recorded as the change cause, as main does
    func: Callable[..., Any] = args.func
    with console.captured() as output:
        try:
            result = func(args, opts)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return Outcome(command, False, output, errors.error_lines(exc))
    return Outcome(command, int(result or 0) == 0, output, [])
