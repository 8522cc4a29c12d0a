"""``swctl logs``: the output of a service's tasks (or one task), from whichever nodes
ran them, prefixed by task the way ``docker service logs`` prints it::

    web.1.3f6ccaf44c5e@node-1    | GET / HTTP/1.1
    web.2.891c485881a6@node-2    | GET / HTTP/1.1

What it owns: finding the tasks (etcd), reaching each task's node and merging the
streams. How a node is reached: every agent serves its node's task logs over HTTP on the
node's own address and records the URL in its Node's ``status.logsEndpoint`` (protocol
in ``shoal/agent/logserver.py``); swctl reads that field and connects to it directly —
nothing goes through etcd or the controllers, as ``docker service logs`` asks each
node's daemon.

Merging: every stream is requested with timestamps. Without ``-f`` everything is read
and printed sorted by time (stable, so one task's lines keep their order). With ``-f``
lines are printed in small time-sorted batches as they arrive (a 0.1 s window), the task
list is re-read every second so tasks that start later (replacements, scale-ups) join
the stream, and it runs until Ctrl-C; a stream that breaks while its task runs (agent
restarted, node briefly unreachable) is re-opened every two seconds, skipping lines
already printed. stderr lines of the tasks go to stderr. A node that cannot be reached
costs a warning for its tasks, not the whole command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

from shoal.agent import logserver
from shoal.agent.exec.executor import LogLine
from shoal.cli import common, errors, service, taskview
from shoal.crds import kinds, resource
from shoal.crds import taskstates as ts
from shoal.pki.bundle import Bundle, peer_cn
from shoal.pki.certs import node_user
from shoal.store import client
from shoal.store import errors as store_errors

CONNECT_TIMEOUT: Final = 5.0
# A non-follow read that stalls this long is a broken node, not a quiet task.
READ_TIMEOUT: Final = 30.0
MERGE_WINDOW: Final = 0.1  # -f: lines arriving within this window are sorted by time
RESCAN_EVERY: Final = 1.0  # -f: how often new tasks of the service are looked for
RETRY_EVERY: Final = 2.0  # -f: how often a broken stream of a running task is retried
SEPARATOR: Final = "    | "
_SERVICE_KINDS: Final = ("service", "services", "svc")
_TASK_KINDS: Final = ("task", "tasks")


class LogsError(Exception):
    """A node refused or could not serve a task's logs; the message says why."""


class NoWorkloadError(LogsError):
    """The node has no workload for the task (any more): removed with its history, by
    `swctl down`, or never started."""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "logs", parents=parents, help="print the logs of a service's tasks or of one task",
        description="Print the output of every task of a service (or of one task), from "
                    "whichever nodes ran them, each line prefixed by its task as "
                    "`docker service logs` does. Each node's agent serves its logs on the "
                    "node's address (Node status.logsEndpoint).")
    add_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``logs``, also those of ``service logs``."""
    p.add_argument("target", metavar="service/NAME|task/NAME",
                   help="a service (service/web, or just web) or one task (task/web.1.2, or "
                        "a task ID prefix as `swctl service ps` shows it)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new output, including of tasks that start later, "
                        "until Ctrl-C")
    p.add_argument("--tail", type=_tail, default=None, metavar="N",
                   help="only the last N lines of each task (default: all)")
    p.add_argument("-t", "--timestamps", action="store_true",
                   help="show each line's time (RFC 3339, UTC)")
    p.add_argument("--no-trunc", action="store_true", help="full task IDs in the prefix")
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    p.set_defaults(func=run, error_code=1)


def _tail(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'invalid tail "{text}": expected a number >= 0 '
                                         "or all")
    return value


# --- which tasks ---

def has_workload(task: resource.Resource) -> bool:
    """Whether the task's node ever started something for it (so has output to show)."""
    if not ts.node_name_of(task):
        return False
    return bool(task.status.get("containerId")) or ts.observed_state(task) in (ts.STARTING,
                                                                               ts.RUNNING)


def task_prefix(task: resource.Resource, no_trunc: bool = False) -> str:
    """``web.1.3f6ccaf44c5e@node-1``: slot (or node, for global tasks), task ID, node."""
    name = ts.service_name(task) or task.metadata.name
    slot = ts.slot_of(task)
    key: int | str = slot if slot else (ts.node_name_of(task) or "")
    label = taskview.slot_label(name, key)
    return f"{label}.{service.short_id(task, no_trunc)}@{ts.node_name_of(task) or '?'}"


def split_target(target: str) -> tuple[str | None, str]:
    """``service/web`` -> ("service", "web"); a bare name -> (None, name)."""
    kind, sep, name = target.partition("/")
    if not sep:
        return None, target
    kind = kind.lower()
    if kind in _SERVICE_KINDS:
        return "service", name
    if kind in _TASK_KINDS:
        return "task", name
    raise errors.CliError(f'cannot show logs of "{target}": expected service/NAME or '
                          "task/NAME")


def match_task(tasks: Sequence[resource.Resource], ref: str) -> resource.Resource | None:
    """A task by name (``web.1.2``), full ID, or unambiguous ID prefix (as ``service ps``
    prints it, without dashes). CliError if a prefix matches several."""
    for task in tasks:
        if task.metadata.name == ref or task.metadata.uid == ref:
            return task
    plain = ref.replace("-", "").lower()
    if len(plain) < 4:
        return None
    found = [t for t in tasks if (t.metadata.uid or "").replace("-", "").startswith(plain)]
    if len(found) > 1:
        names = ", ".join(sorted(t.metadata.name for t in found)[:5])
        raise errors.CliError(f'task ID prefix "{ref}" is ambiguous: {names}')
    return found[0] if found else None


@dataclasses.dataclass
class Target:
    """What ``run`` resolved the argument to: a service's tasks, or one task."""

    namespace: str
    service: str | None = None
    task: str | None = None  # a task's name, when one task was asked for

    def select(self, tasks: Sequence[resource.Resource]) -> list[resource.Resource]:
        if self.task is not None:
            return [t for t in tasks if t.metadata.name == self.task]
        return [t for t in tasks if ts.service_name(t) == self.service]


async def resolve(store: client.Store, registry: kinds.Registry, target: str,
                  namespace: str) -> tuple[Target, list[resource.Resource]]:
    """The target, and the namespace's tasks as listed for it (the caller selects from
    the same listing instead of listing again)."""
    kind, name = split_target(target)
    if not name:
        raise errors.CliError(f'cannot show logs of "{target}": the name is missing')
    services, tasks_info = registry.lookup("services"), registry.lookup("tasks")
    if kind in (None, "service"):
        try:
            await store.get(services, name, namespace)
            tasks, _ = await store.list(tasks_info, namespace)
            return Target(namespace, service=name), tasks
        except store_errors.NotFoundError:
            if kind == "service":
                raise errors.CliError(f'service "{name}" not found in namespace '
                                      f"{namespace}") from None
    tasks, _ = await store.list(tasks_info, namespace)
    task = match_task(tasks, name)
    if task is None:
        what = "task" if kind == "task" else "service or task"
        raise errors.CliError(f'{what} "{name}" not found in namespace {namespace}')
    return Target(namespace, task=task.metadata.name), tasks


# --- one stream ---

def _split_endpoint(endpoint: str) -> tuple[str, str, int]:
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname or not url.port:
        raise LogsError(f'unusable log endpoint "{endpoint}"')
    return url.scheme, url.hostname, url.port


async def _connect(endpoint: str, node: str, tls: Bundle | None,
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``node``'s endpoint; over TLS, one to that node and no other."""
    scheme, host, port = _split_endpoint(endpoint)
    context: ssl.SSLContext | None = None
    if scheme == "https":
        if tls is None:
            raise LogsError(f"node {node} serves its logs over TLS ({endpoint}): give swctl "
                            "the cluster's admin certificate (--etcd-ca, --etcd-cert, "
                            "--etcd-key or $SHOAL_ETCD_CA/CERT/KEY)")
        # The node is identified by its certificate's CN, whatever address it serves on.
        context = tls.client_context(check_hostname=False)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), CONNECT_TIMEOUT)
    except ssl.SSLError as exc:
        raise LogsError(f"node {node} at {endpoint} refused the TLS connection "
                        f"({exc.reason or exc}): is --etcd-cert the cluster's admin "
                        "certificate and --etcd-ca the cluster's CA?") from None
    except (OSError, TimeoutError) as exc:
        raise LogsError(f"cannot reach node {node} at {endpoint}: "
                        f"{exc or type(exc).__name__}") from None
    if context is not None:
        cn = peer_cn(writer.get_extra_info("peercert"))
        if cn != node_user(node):
            writer.close()
            raise LogsError(f"the log endpoint {endpoint} of node {node} presented a "
                            f'certificate for "{cn}", not "{node_user(node)}": not reading '
                            "from it")
    return reader, writer


async def fetch(endpoint: str, node: str, task_uid: str, *, follow: bool = False,
                tail: int | None = None, timestamps: bool = True, tls: Bundle | None = None,
                ) -> AsyncGenerator[LogLine, None]:
    """The lines of one task's workload from its node's agent (HTTP/1.1, chunked; over
    TLS when the endpoint is https, presenting ``tls``)."""
    _, host, port = _split_endpoint(endpoint)
    query = urllib.parse.urlencode({"follow": int(follow), "timestamps": int(timestamps),
                                    "tail": "all" if tail is None else tail})
    path = (f"{logserver.LOGS_PATH}{urllib.parse.quote(node, safe='')}/"
            f"{urllib.parse.quote(task_uid, safe='')}?{query}")
    reader, writer = await _connect(endpoint, node, tls)
    timeout = None if follow else READ_TIMEOUT
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (h.partition(":") for h in header_lines if h)}
        if status != 200:
            body = await asyncio.wait_for(reader.read(64 * 1024), CONNECT_TIMEOUT)
            error = NoWorkloadError if status == 404 else LogsError
            raise error(f"node {node}: {body.decode(errors='replace').strip() or status_line}")
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise LogsError(f"node {node}: unexpected reply from {endpoint}")
        pending = b""
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            pending += data[:-2]
            *records, pending = pending.split(b"\n")
            for record in records:
                line = logserver.decode_line(record)
                if line is not None:
                    yield line
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise LogsError(f"node {node}: the connection to {endpoint} broke "
                        f"({type(exc).__name__})") from None
    except TimeoutError:
        raise LogsError(f"node {node}: no answer from {endpoint} within "
                        f"{READ_TIMEOUT:g}s") from None
    except ValueError as exc:
        raise LogsError(f"node {node}: malformed reply from {endpoint} ({exc})") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# --- printing ---

@dataclasses.dataclass(order=True)
class Record:
    timestamp: float
    seq: int  # arrival order: keeps one task's lines in order when timestamps tie
    prefix: str = dataclasses.field(compare=False)
    line: LogLine = dataclasses.field(compare=False)


def format_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    when = datetime.datetime.fromtimestamp(stamp, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Printer:
    """Writes records with aligned prefixes; stderr lines to stderr."""

    def __init__(self, timestamps: bool) -> None:
        self.timestamps = timestamps
        self.width = 0

    def widen(self, prefixes: Sequence[str]) -> None:
        self.width = max([self.width, *(len(p) for p in prefixes)])

    def emit(self, records: Sequence[Record]) -> None:
        for rec in records:
            text = rec.line.line.decode(errors="replace")
            stamp = f"{format_time(rec.line.timestamp)} " if self.timestamps else ""
            out = sys.stderr if rec.line.stream == "stderr" else sys.stdout
            out.write(f"{rec.prefix:<{self.width}}{SEPARATOR}{stamp}{text}\n")
        sys.stdout.flush()
        sys.stderr.flush()


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class Session:
    """The streams of one ``swctl logs``: one per task, all feeding one queue."""

    def __init__(self, args: argparse.Namespace, endpoints: dict[str, str | None],
                 tls: Bundle | None = None) -> None:
        self.args = args
        self.tls = tls  # presented to nodes that serve logs over TLS
        self.endpoints = endpoints  # node name -> logsEndpoint (None: not served)
        self.queue: asyncio.Queue[Record | None] = asyncio.Queue()
        self.streams: dict[str, asyncio.Task[None]] = {}  # task uid -> its reader
        self.failed = 0
        self.printer = Printer(args.timestamps)
        self._seq = 0
        # -f: streams that broke (node unreachable, agent restarted), when they broke, and
        # the time of the last line each task printed, so a reconnect skips what was shown.
        self.broken: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}

    def attach(self, tasks: Sequence[resource.Resource]) -> None:
        """Start reading every task not read yet."""
        new = [t for t in tasks if has_workload(t) and t.metadata.uid not in self.streams]
        self.printer.widen([task_prefix(t, self.args.no_trunc) for t in new])
        for task in new:
            self.streams[task.metadata.uid] = asyncio.create_task(self._read(task))

    def reattach(self, tasks: Sequence[resource.Resource]) -> None:
        """-f: read again the running tasks whose stream broke a while ago."""
        now = time.monotonic()
        for task in tasks:
            uid = task.metadata.uid
            broke = self.broken.get(uid)
            if broke is None or now - broke < RETRY_EVERY or not ts.is_running(task):
                continue
            if uid in self.streams and not self.streams[uid].done():
                continue
            self.streams[uid] = asyncio.create_task(self._read(task, again=True))

    async def _read(self, task: resource.Resource, again: bool = False) -> None:
        uid = task.metadata.uid
        node = ts.node_name_of(task) or ""
        prefix = task_prefix(task, self.args.no_trunc)
        endpoint = self.endpoints.get(node)
        # A reconnect reads the whole log again and skips what was already printed.
        tail, since = (None, self.last_seen.get(uid)) if again else (self.args.tail, None)
        try:
            if endpoint is None:
                raise LogsError(f"node {node} does not say where it serves logs (no "
                                "status.logsEndpoint: gone, or an agent started with "
                                "--logs-port off)")
            async for line in fetch(endpoint, node, uid, follow=self.args.follow, tail=tail,
                                    tls=self.tls):
                stamp = line.timestamp or 0.0
                if since is not None and stamp <= since:
                    continue
                self.last_seen[uid] = stamp
                self._seq += 1
                await self.queue.put(Record(stamp, self._seq, prefix, line))
            self.broken.pop(uid, None)
        except LogsError as exc:
            if isinstance(exc, NoWorkloadError) and ts.has_ended(task):
                # An ended task whose container is gone (history, or `swctl down`
                # removed it): nothing to show and nothing wrong.
                return
            if uid not in self.broken:  # say it once; -f keeps trying quietly
                self.failed += not again
                retrying = " (retrying while the task runs)" if self.args.follow else ""
                warn(f"{prefix}: {exc}{retrying}")
            self.broken[uid] = time.monotonic()

    def running(self) -> bool:
        return any(not s.done() for s in self.streams.values())

    async def drain_all(self) -> None:
        """Without -f: wait for every stream, then print everything in time order."""
        await asyncio.gather(*self.streams.values())
        records: list[Record] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                records.append(item)
        self.printer.emit(sorted(records))

    async def print_batches(self) -> None:
        """With -f: print what arrives, a short window at a time, sorted by time."""
        while True:
            first = await self.queue.get()
            await asyncio.sleep(MERGE_WINDOW)
            batch = [first] if first is not None else []
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if item is not None:
                    batch.append(item)
            self.printer.emit(sorted(batch))

    async def close(self) -> None:
        for stream in self.streams.values():
            stream.cancel()
        await asyncio.gather(*self.streams.values(), return_exceptions=True)


async def _endpoints(store: client.Store, registry: kinds.Registry) -> dict[str, str | None]:
    nodes, _ = await store.list(registry.lookup("nodes"))
    return {n.metadata.name: (str(n.status["logsEndpoint"])
                              if n.status.get("logsEndpoint") else None) for n in nodes}


async def _follow(store: client.Store, registry: kinds.Registry, target: Target,
                  session: Session) -> None:
    printer = asyncio.create_task(session.print_batches())
    try:
        tasks_info = registry.lookup("tasks")
        while True:
            await asyncio.sleep(RESCAN_EVERY)
            tasks, _ = await store.list(tasks_info, target.namespace)
            selected = target.select(tasks)
            if session.broken or any(has_workload(t) and t.metadata.uid not in session.streams
                                     for t in selected):
                # A restarted agent may serve on another port: re-read the endpoints.
                session.endpoints.update(await _endpoints(store, registry))
                session.attach(selected)
                session.reattach(selected)
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    # Ctrl-C ends a follow cleanly (exit 0), as it ends `docker service logs -f`.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, main.cancel)
    try:
        return await _run(args, opts)
    except asyncio.CancelledError:
        return 0
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        namespace = args.namespace or resource.DEFAULT_NAMESPACE
        target, tasks = await resolve(store, registry, args.target, namespace)
        selected = target.select(tasks)
        session = Session(args, await _endpoints(store, registry), opts.tls)
        session.attach(selected)
        try:
            if args.follow:
                await _follow(store, registry, target, session)
                return 0
            if not session.streams:
                what = f"task {target.task}" if target.task else f"service {target.service}"
                print(f"No output: no task of {what} has started on a node yet",
                      file=sys.stderr)
                return 0
            await session.drain_all()
        finally:
            await session.close()
    return 1 if session.streams and session.failed == len(session.streams) else 0
