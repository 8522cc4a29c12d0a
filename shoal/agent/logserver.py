"""The agent's log endpoint: this node's task logs over HTTP, for ``swctl logs``.

What it owns: one small HTTP/1.1 server per agent process, bound to the node's own
address (``status.address``) on port 4790 by default, serving the output of the
workloads of the process's nodes through each driver's ``Executor.logs()``. The agent
records where it listens in its Node's ``status.logsEndpoint`` (``http://ADDR:PORT``);
``swctl logs`` reads that, connects to every node that ran a task of the service and
merges the streams (``shoal/cli/logs.py``).

Why a server on the node rather than logs shipped into etcd: task output is large and
unbounded, and etcd holds desired and observed state, not data. The node already has the
output (dockerd's json-file logs, the process driver's CRI files), so swctl reads it
where it is, as ``docker service logs`` reads each node's daemon. Why plain asyncio
streams and not an HTTP framework: one GET route, chunked responses and disconnect
detection are a hundred lines, and the agent gains no dependency.

Protocol (stable; the client is ``shoal.cli.logs``)::

    GET /v1/logs/<node>/<task-uid>?follow=0|1&tail=N&timestamps=0|1 HTTP/1.1
    -> 200, Transfer-Encoding: chunked, Content-Type: application/x-shoal-log-lines
       one record per log line: "<o|e> <unix-seconds|-> <line bytes>\\n"
    -> 404 (unknown node, no workload for the task), 400 (bad request): a text/plain
       reason, which swctl prints
    GET /healthz -> 200 "ok"

``o``/``e`` is stdout/stderr; the line is the workload's raw bytes without its newline,
so any encoding passes through untouched. A followed stream ends when the workload's
output ends (it exited) or when the client disconnects (swctl got Ctrl-C); the server
notices a disconnect even while the workload is silent, so no follower outlives its
client. Each connection serves one request (``Connection: close``).

If the port is taken (two agents in one network namespace, e.g. tests), the server takes
any free port and advertises that one: the endpoint in the Node is the truth.

TLS. An agent given the node's certificate (``--tls-dir``) serves ``https://`` only: the
client must present a certificate from the cluster CA whose CN is an admin's (``root``,
what ``swctl logs`` presents), else the handshake fails (no certificate, another CA) or
the request gets 403 naming the CN it came with. Task output often holds secrets, so a
worker's certificate is not enough to read another node's logs. The server presents the
node's certificate; clients identify the node by its CN (``shoal:node:<name>``), not by
the address. Plain HTTP stays only for clusters without TLS (``swctl up`` dev clusters).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Final

import structlog

from shoal.agent.exec.executor import MISSING, Executor, LogLine
from shoal.pki.bundle import Bundle, peer_cn

log = structlog.get_logger("shoal.agent.logserver")

DEFAULT_PORT: Final = 4790
LOGS_PATH: Final = "/v1/logs/"
CONTENT_TYPE: Final = "application/x-shoal-log-lines"
REQUEST_TIMEOUT: Final = 10.0  # to send the request head; slower clients are dropped
MAX_HEAD: Final = 16 * 1024
CHUNK_BYTES: Final = 64 * 1024  # records batched into one chunk, at most this much
QUEUE_LINES: Final = 4096  # back-pressure: a slow reader slows the driver's stream

_STREAM_CODES: Final = {"stdout": b"o", "stderr": b"e"}
_CODE_STREAMS: Final = {b"o": "stdout", b"e": "stderr"}


#: Who may read task logs over TLS: the CN of the admin certificate (docs/pki.md).
ADMIN_USERS: Final = frozenset({"root"})


def endpoint_url(host: str, port: int, tls: bool = False) -> str:
    """``http://HOST:PORT`` (``https`` with TLS); IPv6 literals bracketed."""
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def encode_line(line: LogLine) -> bytes:
    stamp = b"-" if line.timestamp is None else f"{line.timestamp:.6f}".encode()
    # Drivers split on newlines already; a stray CR/LF inside must not break framing.
    text = line.line.replace(b"\n", b" ")
    return _STREAM_CODES.get(line.stream, b"o") + b" " + stamp + b" " + text + b"\n"


def decode_line(record: bytes) -> LogLine | None:
    """One record (without its newline) back into a LogLine; None if malformed."""
    parts = record.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in _CODE_STREAMS:
        return None
    stamp: float | None = None
    if parts[1] != b"-":
        try:
            stamp = float(parts[1])
        except ValueError:
            return None
    return LogLine(_CODE_STREAMS[parts[0]], parts[2] if len(parts) == 3 else b"", stamp)


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return (query.get(name) or ["0"])[-1].lower() in ("1", "true", "yes")


def _tail(query: Mapping[str, list[str]]) -> int | None:
    raw = (query.get("tail") or [""])[-1]
    if raw in ("", "all"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(400, "Bad Request", f'invalid tail "{raw}": expected a '
                          "number or all") from None
    if value < 0:
        raise _BadRequest(400, "Bad Request", f'invalid tail "{raw}": must be >= 0')
    return value


class LogServer:
    """Serves the logs of the workloads of ``executors`` (node name -> driver)."""

    def __init__(self, executors: Mapping[str, Executor], host: str,
                 port: int = DEFAULT_PORT, tls: Bundle | None = None,
                 readers: frozenset[str] = ADMIN_USERS) -> None:
        self.executors = executors
        self.host = host
        self.port = port
        self.tls = tls
        self.readers = readers  # CNs allowed to read logs over TLS
        self._ssl = tls.server_context() if tls is not None else None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.endpoint: str | None = None

    async def start(self) -> str:
        """Listen; returns the endpoint URL. The preferred port falls back to any free
        one when it is taken; any other bind error (the address is not this host's)
        propagates."""
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                      ssl=self._ssl)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or self.port == 0:
                raise
            log.warning("log port taken, using any free port", address=self.host,
                        port=self.port)
            self._server = await asyncio.start_server(self._accept, self.host, 0, ssl=self._ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = endpoint_url(self.host, port, tls=self._ssl is not None)
        log.info("serving task logs", endpoint=self.endpoint, nodes=len(self.executors))
        return self.endpoint

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    # --- connections ---

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; nothing to tell anyone
        except asyncio.CancelledError:
            pass  # the agent is stopping
        except Exception as exc:  # one bad connection must never take the agent down
            log.error("log request failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except TimeoutError:
            return
        if len(head) > MAX_HEAD:
            await _respond(writer, 431, "Request Header Fields Too Large", "request too large")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, "Bad Request", "malformed request line")
            return
        method, target, _ = parts
        if method != "GET":
            await _respond(writer, 405, "Method Not Allowed", "only GET is served")
            return
        url = urllib.parse.urlsplit(target)
        if url.path == "/healthz":
            await _respond(writer, 200, "OK", "ok")
            return
        if self._ssl is not None:
            # The handshake proved the certificate is the cluster's; whose it is decides.
            cn = peer_cn(writer.get_extra_info("peercert"))
            if cn not in self.readers:
                log.warning("log request refused", key=cn, path=url.path)
                await _respond(writer, 403, "Forbidden", (
                    f'task logs are served to the cluster\'s admin certificate only (CN '
                    f'{", ".join(sorted(self.readers))}); this client presented CN "{cn}". '
                    "Run swctl logs with the admin certificate (--etcd-cert root.crt)"))
                return
        if not url.path.startswith(LOGS_PATH):
            await _respond(writer, 404, "Not Found", f"no such path {url.path}; logs are at "
                           f"{LOGS_PATH}<node>/<task-uid>")
            return
        try:
            await self._serve_logs(reader, writer, url)
        except _BadRequest as exc:
            await _respond(writer, exc.status, exc.reason, str(exc))

    async def _serve_logs(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          url: urllib.parse.SplitResult) -> None:
        rest = url.path[len(LOGS_PATH):]
        node_name, _, uid = (urllib.parse.unquote(p) for p in rest.partition("/"))
        if not node_name or not uid or "/" in uid:
            raise _BadRequest(400, "Bad Request", f"expected {LOGS_PATH}<node>/<task-uid>")
        executor = self.executors.get(node_name)
        if executor is None:
            raise _BadRequest(404, "Not Found", f"node {node_name} is not served by this "
                              "agent")
        query = urllib.parse.parse_qs(url.query)
        follow, timestamps, tail = _flag(query, "follow"), _flag(query, "timestamps"), \
            _tail(query)
        if await executor.observe(uid) == MISSING:
            raise _BadRequest(404, "Not Found", f"no workload for task {uid} on node "
                              f"{node_name} (not started yet, or removed with its task)")
        logger = log.bind(node=node_name, task_uid=uid, follow=follow)
        logger.debug("log stream opened", tail=tail)
        writer.write(b"HTTP/1.1 200 OK\r\n"
                     b"Content-Type: " + CONTENT_TYPE.encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
                     b"Cache-Control: no-store\r\n\r\n")
        t0 = time.monotonic()
        lines = executor.logs(uid, follow=follow, tail=tail, timestamps=timestamps)
        sent = await _stream(lines, reader, writer)
        if sent is not None:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        logger.debug("log stream closed", lines=sent, client_gone=sent is None,
                     seconds=round(time.monotonic() - t0, 3))


async def _stream(lines: AsyncIterator[LogLine], reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> int | None:
    """Copy ``lines`` to the client as chunks; the number of lines, or None if the
    client disconnected first.

    Three parties: a producer pulling from the driver into a bounded queue, the client's
    side of the socket (end of file = it went away, even while the workload is silent),
    and this loop, which batches whatever is queued into one chunk per wake-up.
    """
    queue: asyncio.Queue[LogLine | Exception | None] = asyncio.Queue(QUEUE_LINES)

    async def produce() -> None:
        try:
            async for line in lines:
                await queue.put(line)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the driver failed: the consumer re-raises it
            await queue.put(exc)
            return
        await queue.put(None)

    producer = asyncio.create_task(produce())
    client_gone = asyncio.create_task(reader.read(1))  # the client never sends a body
    sent = 0
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, client_gone},
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return None
            batch = bytearray()
            item = getter.result()
            while isinstance(item, LogLine):
                batch += encode_line(item)
                sent += 1
                if len(batch) >= CHUNK_BYTES or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                writer.write(f"{len(batch):x}\r\n".encode() + bytes(batch) + b"\r\n")
                await writer.drain()
            if isinstance(item, Exception):
                raise item
            if item is None:
                return sent
    finally:
        for task in (producer, client_gone):
            task.cancel()
        await asyncio.gather(producer, client_gone, return_exceptions=True)
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _respond(writer: asyncio.StreamWriter, status: int, reason: str,
                   text: str) -> None:
    body = (text + "\n").encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
