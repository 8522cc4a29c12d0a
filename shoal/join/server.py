"""The join endpoint's transport: HTTPS on port 4243, and a clear refusal of plain HTTP.

What it owns: accepting connections, telling TLS from plain HTTP by the first byte (a TLS
record starts with 0x16, a plain request with a method name), the TLS handshake with the
manager's server certificate, reading one small request and writing one JSON answer.
What is answered is ``service.JoinService``'s business; this module only routes.

Why peek instead of serving TLS outright: a client speaking plain HTTP to a TLS port gets
a handshake failure it cannot explain (curl: "Empty reply from server"); answering it in
plain HTTP with a 400 naming the problem ("this endpoint speaks HTTPS only") is what a
user can act on, as nginx does. Why plain asyncio and no HTTP framework: three routes,
one request per connection (``Connection: close``), bodies of a few kilobytes.

Client certificates are asked for but optional (``GET /ca`` and ``POST /join`` come from
machines that have none yet); ``POST /renew`` requires one issued by the cluster CA, and
renews exactly the name that certificate carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from shoal.join.protocol import MAX_BODY, Refusal

log = structlog.get_logger("shoal.join.server")

HEAD_TIMEOUT: Final = 10.0
MAX_HEAD: Final = 16 * 1024
_TLS_HANDSHAKE: Final = 0x16

#: A route: (body, client certificate's CN or "") -> (status, content type, body).
Handler = Callable[[bytes, str], Awaitable[tuple[int, str, bytes]]]

PLAIN_HTTP_REFUSAL: Final = (
    "this is a Shoal join endpoint: it speaks HTTPS only, with the cluster's own CA. Join "
    "with `swctl join --token TOKEN ADDR[:PORT]`, which checks the CA against the token\n")


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class JoinServer:
    """Serves ``routes`` (``"GET /ca"`` -> handler) on ``host:port`` until closed."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext,
                 routes: dict[str, Handler]) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.routes = routes
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._task = asyncio.create_task(self._accept_loop(), name="join-server")
        log.info("join endpoint listening", address=f"{self.host}:{self.port}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in list(self._conns):
            conn.cancel()
        if self._sock is not None:
            self._sock.close()

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self._sock)
            task = asyncio.create_task(self._connection(conn, f"{peer[0]}:{peer[1]}"))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _connection(self, conn: socket.socket, peer: str) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            first = await asyncio.wait_for(_peek(conn), HEAD_TIMEOUT)
            tls = bool(first) and first[0] == _TLS_HANDSHAKE
            reader, writer = await _streams(conn, self.tls if tls else None)
            if not tls:
                await _plain_refusal(reader, writer)
                log.info("plain HTTP refused", peer=peer)
                return
            await self._serve(reader, writer, peer)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.info("join connection dropped", peer=peer, error=str(exc) or type(exc).__name__)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                conn.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        method, path, body = await _read_request(reader)
        handler = self.routes.get(f"{method} {path}")
        if handler is None:
            known = ", ".join(sorted(self.routes))
            status, ctype, out = 404, "text/plain", f"no route {method} {path}; this " \
                f"endpoint serves {known}\n".encode()
        else:
            try:
                status, ctype, out = await handler(body, _peer_cn(writer))
            except Refusal as refusal:
                status, ctype, out = refusal.status, "application/json", \
                    json.dumps({"error": refusal.message}).encode()
                log.info("join request refused", peer=peer, route=f"{method} {path}",
                         status=status, reason=refusal.message)
        await _respond(writer, status, ctype, out)


async def _peek(conn: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for whoever reads next."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(1, socket.MSG_PEEK)


async def _streams(conn: socket.socket, tls: ssl.SSLContext | None,
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_HEAD + MAX_BODY)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=HEAD_TIMEOUT if tls else None)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ConnectionError(f"malformed request line {lines[0]!r}")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip() or 0)
    if length > MAX_BODY:
        raise ConnectionError(f"request body of {length} bytes is over {MAX_BODY}")
    body = await asyncio.wait_for(reader.readexactly(length), HEAD_TIMEOUT) if length else b""
    return parts[0], parts[1].split("?")[0], body


async def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              409: "Conflict", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "Error")
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()


async def _plain_refusal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    await _respond(writer, 400, "text/plain", PLAIN_HTTP_REFUSAL.encode())


def _peer_cn(writer: asyncio.StreamWriter) -> str:
    """The verified client certificate's CN, or "" when the client showed none."""
    cert: Any = writer.get_extra_info("peercert")
    if not cert:
        return ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
