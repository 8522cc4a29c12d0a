"""Keepalives for many etcd leases over one HTTP/2 stream, written frame by frame.

An agent serving many (hollow) nodes refreshes one lease per node every TTL/3: 1,000
keepalives a second. Through ``grpc.aio`` each costs an awaited write and an awaited read
on the LeaseKeepAlive stream, plus work in grpc's poller thread: measured with 1,000
leases, 12-15 % of a CPU in the client and ~14 % in etcd, on a machine whose two cores
the benchmark needs for the cluster it measures. Here a whole round is one write — every
request of the round in as few HTTP/2 DATA frames as flow control allows, the request
bytes built once per lease — and the answers are read in bulk: 2-3 % of a CPU in the
client, ~8 % in etcd (which now reads a round from a few frames).

gRPC over HTTP/2 is thin: a call is a stream whose HEADERS name the method and whose
DATA carries messages, each prefixed with a compressed flag and a 4-byte length. The
``h2`` library keeps the HTTP/2 state (HPACK, settings, flow control, pings); this module
does the gRPC framing and the lifecycle: the stream is opened on first use, and when the
connection or the stream ends for any reason it is reopened on the next round, and the
round's unanswered leases come back as ``None`` — the caller simply asks again, exactly
as with a lost gRPC stream. Messages are the etcd protobufs aetcd ships.

With several endpoints (``http://a:2379,http://b:2379``) the stream lives on one member
at a time: opening tries them in turn from the one after the member last used, so when a
member dies the next round's stream opens on a live one. Given ``members`` (a store's
``EtcdClient.endpoints``, which follows the cluster's membership), each opening takes the
current list from it, so members added after the start are used too.

With a TLS bundle the connection is TLS with ALPN ``h2``, presenting the bundle's
certificate and checking the server's against the cluster CA under the name
``etcd.shoal``, exactly as the gRPC client in ``shoal.store.etcd`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable, Sequence

import aetcd.rpc as rpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import structlog

from shoal.pki.bundle import Bundle
from shoal.pki.certs import ETCD_SERVER_NAME
from shoal.store import etcd

log = structlog.get_logger("shoal.store.leasestream")

METHOD = b"/etcdserverpb.Lease/LeaseKeepAlive"
CONNECT_TIMEOUT = 5.0
READ_CHUNK = 1 << 16
_PREFIX = struct.Struct(">BI")  # gRPC message prefix: compressed flag, length


def frame(lease: int) -> bytes:
    """One LeaseKeepAliveRequest as a length-prefixed gRPC message."""
    body: bytes = rpc.LeaseKeepAliveRequest(ID=lease).SerializeToString()
    return _PREFIX.pack(0, len(body)) + body


class StreamClosed(Exception):
    """The connection or the stream ended; the next round opens a new one."""


class _Stream:
    """One open LeaseKeepAlive call: its connection, HTTP/2 state and reader task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: h2.connection.H2Connection, stream_id: int) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.stream_id = stream_id
        self.pending = bytearray()  # request bytes waiting for flow-control window
        self.inbound = bytearray()  # response bytes not yet a whole message

    def flush(self) -> None:
        """Send as much of ``pending`` as the stream's send window and frame size allow."""
        conn, sid = self.conn, self.stream_id
        while self.pending:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                break  # the rest goes when etcd opens the window (WindowUpdated)
            chunk = bytes(self.pending[:room])
            conn.send_data(sid, chunk)
            del self.pending[:room]
        out = conn.data_to_send()
        if out:
            self.writer.write(out)

    def close(self) -> None:
        self.writer.close()


class KeepaliveStream:
    """Refreshes leases in rounds: ``keepalive(leases)`` -> the TTL etcd granted each."""

    def __init__(self, url: str, tls: Bundle | None = None,
                 members: Callable[[], Sequence[etcd.Endpoint]] | None = None) -> None:
        self.url = url
        self._members = members
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = tls.client_context(alpn=["h2"])
        self._endpoints = etcd.parse_endpoints(url)
        self._next = 0  # the endpoint the next stream tries first
        self._stream: _Stream | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._frames: dict[int, bytes] = {}
        self._results: dict[int, int] = {}
        self._waiting: set[int] = set()
        self._answered = asyncio.Event()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """A connection to the first endpoint that takes one, from ``_next`` on."""
        endpoints = self._current()
        count = len(endpoints)
        last: BaseException | None = None
        for step in range(count):
            ep = endpoints[(self._next + step) % count]
            try:
                if self._ssl is None:
                    opening = asyncio.open_connection(ep.host, ep.port)
                else:
                    opening = asyncio.open_connection(ep.host, ep.port, ssl=self._ssl,
                                                      server_hostname=ETCD_SERVER_NAME)
                reader, writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                last = exc
                continue
            # The following stream starts on the next member: one that broke is
            # likely dead, and a live one takes the connection again when its turn comes.
            self._next = (self._next + step + 1) % count
            return reader, writer, f"{ep.host}:{ep.port}"
        assert last is not None
        raise last

    def _current(self) -> Sequence[etcd.Endpoint]:
        if self._members is not None:
            current = self._members()
            if current:
                self._endpoints = list(current)
        return self._endpoints

    async def _open(self) -> _Stream:
        reader, writer, authority = await self._connect()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [
            (b":method", b"POST"), (b":path", METHOD),
            (b":scheme", b"http" if self._ssl is None else b"https"),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        ])
        stream = _Stream(reader, writer, conn, stream_id)
        writer.write(conn.data_to_send())
        self._reader_task = asyncio.get_running_loop().create_task(self._read(stream))
        return stream

    async def _read(self, stream: _Stream) -> None:
        try:
            while True:
                data = await stream.reader.read(READ_CHUNK)
                if not data:
                    raise StreamClosed("etcd closed the connection")
                self._handle(stream, stream.conn.receive_data(data))
                out = stream.conn.data_to_send()  # window updates, ping and settings acks
                if out:
                    stream.writer.write(out)
        except (StreamClosed, OSError, h2.exceptions.H2Error) as exc:
            log.warning("lease keepalive stream broke; reopening on the next round",
                        key=self.url, error=str(exc) or type(exc).__name__)
        finally:
            stream.close()
            if self._stream is stream:
                self._stream = None
            self._answered.set()  # wake the round: what is unanswered stays unanswered

    def _handle(self, stream: _Stream, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                stream.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_id == stream.stream_id and ev.data:
                    stream.inbound += ev.data
                    self._messages(stream)
            elif isinstance(ev, h2.events.WindowUpdated):
                stream.flush()
            elif isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status")
                if status != b"200":
                    raise StreamClosed(f"etcd answered HTTP status {status!r}")
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = dict(ev.headers)
                raise StreamClosed(f"call ended: grpc-status "
                                   f"{trailers.get(b'grpc-status', b'?').decode()} "
                                   f"{trailers.get(b'grpc-message', b'').decode()}".strip())
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset,
                                 h2.events.ConnectionTerminated)):
                raise StreamClosed(type(ev).__name__)

    def _messages(self, stream: _Stream) -> None:
        buf = stream.inbound
        at = 0
        while len(buf) - at >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(buf, at)
            if compressed:
                raise StreamClosed("compressed message (none was asked for)")
            end = at + _PREFIX.size + length
            if end > len(buf):
                break
            resp = rpc.LeaseKeepAliveResponse.FromString(bytes(buf[at + _PREFIX.size:end]))
            at = end
            self._results[resp.ID] = resp.TTL
            self._waiting.discard(resp.ID)
        del buf[:at]
        if not self._waiting:
            self._answered.set()

    async def keepalive(self, leases: list[int], timeout: float) -> dict[int, int | None]:
        """TTL per lease (0: expired; None: no answer in time, or the stream broke)."""
        if not leases:
            return {}
        try:
            stream = await self._ready_stream()
        except (OSError, TimeoutError, h2.exceptions.H2Error) as exc:
            log.warning("lease keepalive stream cannot be opened", key=self.url,
                        error=str(exc) or type(exc).__name__)
            return dict.fromkeys(leases)
        # The round starts only now: a reader ended by the stream checks above wakes
        # ``_answered`` on its way out, which must not count for this round.
        self._results = {}
        self._waiting = set(leases)
        self._answered.clear()
        frames = self._frames
        for lease in leases:
            chunk = frames.get(lease)
            if chunk is None:
                chunk = frames[lease] = frame(lease)
            stream.pending += chunk
        stream.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._answered.wait()
        if len(frames) > 2 * len(leases) + 64:  # leases replaced over time
            self._frames = {lease: frames[lease] for lease in leases if lease in frames}
        results = self._results
        if not results and self._stream is stream and len(self._current()) > 1:
            # Not one answer in a whole round from a connected member: it is cut off from
            # its cluster's leader, or wedged. The next round opens on another member.
            log.warning("lease keepalive round unanswered; moving to another member",
                        key=self.url)
            await self.close()
        return {lease: results.get(lease) for lease in leases}

    async def _ready_stream(self) -> _Stream:
        """The open stream, after replacing one that is stuck or lost."""
        if self._stream is not None and self._stream.pending:
            # A whole round went by without etcd opening the window for the previous
            # requests: a wedged connection. Start afresh.
            log.warning("lease keepalive stream stuck; reopening", key=self.url)
            await self.close()
        elif self._stream is not None and self._stream.writer.is_closing():
            await self.close()  # lost under us; its reader may not have noticed yet
        if self._stream is None:
            if self._reader_task is not None:
                await asyncio.gather(self._reader_task, return_exceptions=True)
            self._stream = await self._open()
        return self._stream

    async def close(self) -> None:
        stream, task = self._stream, self._reader_task
        self._stream = None
        if stream is not None:
            stream.close()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
