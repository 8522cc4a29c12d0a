"""Running one generated case against one input surface and judging the outcome.

Shared by the fuzz tests (a few hundred cases each, derandomized) and ``bench/fuzz.py``
(ten thousand and more), so both hold every surface to the same rule: a clear error, or
success — never a traceback, never a partial write. A verdict is one of ``OK`` (accepted),
``ERROR`` (refused with a message), ``CRASH`` (an exception that is not a user-facing
error, or a message with a traceback or ``internal error`` in it) or ``PARTIAL`` (refused,
but etcd changed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from shoal.cli import apply, errors, keyring, manifests
from shoal.cli import main as cli_main
from shoal.compose import ComposeError, convert_stack, load_project
from shoal.crds import admission, kinds
from shoal.store import client, codec

OK, ERROR, CRASH, PARTIAL, HANG = "ok", "error", "crash", "partial", "hang"


@dataclasses.dataclass
class Verdict:
    outcome: str
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.outcome in (CRASH, PARTIAL, HANG)


def _message_verdict(lines: Sequence[str]) -> Verdict:
    text = "\n".join(lines)
    if not text.strip():
        return Verdict(CRASH, "refused without a message")
    if "Traceback" in text or "internal error" in text:
        return Verdict(CRASH, text[-2000:])
    return Verdict(ERROR, text)


def _crash(exc: BaseException) -> Verdict:
    import traceback

    return Verdict(CRASH, "".join(traceback.format_exception(exc))[-3000:])


def to_yaml(docs: Sequence[Any]) -> str:
    return yaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False)


# --- 1. manifests ---

async def snapshot(store: client.Store) -> dict[bytes, tuple[bytes, int]]:
    """Every key under the store's prefix with its value and version."""
    kvs, _ = await store.raw_list(store.prefix.encode() + b"/")
    return {kv.key: (kv.value, kv.mod_revision) for kv in kvs}


async def apply_library(store: client.Store, docs: Sequence[Any] | str, ring: keyring.Source,
                        namespace: str | None = None) -> Verdict:
    """``swctl apply``'s own steps as a library call: parse, admit, plan, write."""
    before = await snapshot(store)
    try:
        text = docs if isinstance(docs, str) else to_yaml(docs)
        parsed = manifests.parse(text, "fuzz.yaml")
        if not parsed:
            return Verdict(OK, "no documents")
        from shoal.cli import common

        registry = await common.registry_of(store)
        planned = await apply.admit_and_plan(store, registry, parsed, namespace, None, ring)
        await apply.write(store, planned, lambda p: None)
    except (errors.CliError, admission.ValidationError) as exc:
        verdict = _message_verdict(errors.messages_for(exc) or [])
        if await snapshot(store) != before:
            return Verdict(PARTIAL, verdict.detail)
        return verdict
    except Exception as exc:
        return _crash(exc)
    return Verdict(OK)


HUNG = -999
"""run_swctl's exit code for a swctl that did not finish in time."""


def run_swctl(argv: Sequence[str], env: dict[str, str], cwd: Path,
              timeout: float = 60) -> tuple[int, str, str]:
    """Run the real swctl; a NUL in an argument (no shell can pass one) runs nothing."""
    from tests.integration.cli_support import command

    if any("\x00" in arg for arg in argv):
        return 0, "", ""
    try:
        proc = subprocess.run(command(*argv), capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return HUNG, "", f"swctl {' '.join(argv)} did not finish in {timeout:g} s"
    return proc.returncode, proc.stdout, proc.stderr


def exit_verdict(code: int, stderr: str, ok_codes: Sequence[int] = (0,)) -> Verdict:
    if code == HUNG:
        return Verdict(HANG, stderr)
    if code in ok_codes:
        if "Traceback" in stderr:
            return Verdict(CRASH, stderr[-2000:])
        return Verdict(OK)
    if code not in (1, 2):
        return Verdict(CRASH, f"exit {code}: {stderr[-2000:]}")
    return _message_verdict([line for line in stderr.splitlines() if line.strip()])


# --- 2. compose ---

def compose_convert(data: Any, workdir: Path, stack: str = "fz") -> Verdict:
    """``stack convert``'s loader, converter and admission on one compose file."""
    path = workdir / "docker-compose.yml"
    try:
        text = data if isinstance(data, str) else yaml.safe_dump(
            data, allow_unicode=True, sort_keys=False)
        path.write_text(text, errors="surrogateescape")
    except (UnicodeEncodeError, yaml.YAMLError):
        return Verdict(OK, "not writable as YAML")
    try:
        objs = convert_stack(load_project([path], {}), stack)
        docs = [manifests.Document("docker-compose.yml", i, o) for i, o in enumerate(objs, 1)]
        apply.admit_documents(kinds.Registry.builtin(), docs, stack, _throwaway())
    except ComposeError as exc:
        return _message_verdict([str(exc)])
    except errors.CliError as exc:
        return _message_verdict(exc.lines)
    except Exception as exc:
        return _crash(exc)
    return Verdict(OK)


def _throwaway() -> keyring.Source:
    from shoal.cli.stackdeploy import _ThrowawayKeyring

    return _ThrowawayKeyring()


# --- 3. CLI arguments, in-process ---

class _Hang(BaseException):
    """Raised from SIGALRM: the verb did not finish in time."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang()


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def cli_in_process(argv: list[str], env: dict[str, str], timeout: int = 20) -> Verdict:
    """``shoal.cli.main.main(argv)`` with stdout/stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    # grpc's aio poller outlives the loop of one ``asyncio.run`` and, in the next, logs
    # "Event loop is closed" through asyncio's logger: an artefact of running many
    # commands in one process (swctl runs one loop per process and never shows it).
    logging.getLogger("asyncio").disabled = True
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    code: int | str | None
    try:
        with _environ(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main.main(argv)
    except SystemExit as exc:
        code = exc.code
    except _Hang:
        return Verdict(HANG, " ".join(argv))
    except Exception as exc:
        return _crash(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if not isinstance(code, int):
        code = 1 if code else 0
    verdict = exit_verdict(code, err.getvalue())
    verdict.detail = f"{' '.join(map(repr, argv))}: {verdict.detail}"
    return verdict


# --- 4. bytes in etcd, read back ---

def decode_and_key(info: kinds.KindInfo, prefix: str, key: bytes, value: bytes) -> Verdict:
    """What every list and watch does with a stored value: decode it (or skip it with a
    warning) and, for a delete, name it from its key. Either is fine; raising is not."""
    from shoal.cli import describe, printers
    from shoal.store import watch

    try:
        kind_prefix = codec.kind_prefix(prefix, info)
        obj = codec.decode_at(info, kind_prefix, key, value, 7)
        watch.stub_from_key(info, key, kind_prefix, 8)
        if obj is not None:
            # What a user then looks at: describe (with the object as an event of
            # itself, for Events' shapes) and get's table.
            describe.render(info, obj, [obj.to_dict()])
            for output in ("table", "wide", "yaml"):
                printers.format_objects(info, [obj], output, single=False)
    except Exception as exc:
        return _crash(exc)
    return Verdict(OK if obj is not None else ERROR)
