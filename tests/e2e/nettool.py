"""Tiny traffic tool run inside lab namespaces (``ip netns exec NS python nettool.py ...``).

serve NAME PORT      TCP and UDP on PORT: every TCP connection gets NAME, every UDP
                     datagram gets "NAME <length>" back. Runs until killed.
tcp HOST PORT N [S]  N connections, one reply per line (or "ERR <reason>"); a refused or
                     timed-out connection is retried for up to S seconds (default 20).
udp HOST PORT SIZE   one datagram of SIZE bytes with DF set; prints the reply or ERR.
http HOST PORT N [S] N HTTP/1.0 GETs of /, one line each: the body's first line (or ERR),
                     retried like tcp for up to S seconds (default 20).
say HOST PORT TEXT   one TCP connection: send TEXT, print the reply (or ERR <reason>).
echo NAME PORT       TCP on PORT: each line a client sends is answered "NAME <line>", on
                     the same connection, for as long as the client keeps it open.
hold HOST PORT       one TCP connection held open: every line read from stdin is sent
                     and the reply printed ("ERR <reason>" once the connection is gone).
load HOST PORT PATH  HTTP/1.0 GETs of PATH one after another, a new connection each,
                     until stdin has a line (or ends); then one JSON line: ok, failed,
                     the replies' bodies counted, and the first failures with their
                     times. A failure is an error, a timeout (2 s) or a non-200 reply.
                     Prints "started" once a request has succeeded; failures before
                     that are not counted (the service may not answer yet).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2


def serve(name: str, port: int) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))

    def udp_loop() -> None:
        while True:
            data, peer = udp.recvfrom(65535)
            udp.sendto(f"{name} {len(data)}".encode(), peer)

    threading.Thread(target=udp_loop, daemon=True).start()
    while True:
        conn, _ = tcp.accept()
        with conn:
            conn.sendall(name.encode())


def echo(name: str, port: int) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(16)

    def answer(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                conn.sendall(f"{name} {line.decode().strip()}\n".encode())

    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def _probe(once: Callable[[], str], count: int, retry: float) -> None:
    """Print ``count`` replies of ``once``; each gets at least one attempt and is retried
    while the server may still be starting (refused or timed out) until ``retry`` s."""
    deadline = time.monotonic() + retry
    for _ in range(count):
        while True:
            try:
                reply = once()
                break
            except OSError as exc:
                reply = f"ERR {exc.__class__.__name__}"
                retriable = isinstance(exc, ConnectionRefusedError | TimeoutError)
                if retriable and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                break
        print(reply, flush=True)


def tcp(host: str, port: int, count: int, retry: float = 20) -> None:
    def once() -> str:
        with socket.create_connection((host, port), timeout=1) as s:
            return s.recv(256).decode() or "ERR empty"

    _probe(once, count, retry)


def udp(host: str, port: int, size: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    s.settimeout(1)
    for _ in range(10):  # the server may still be starting
        try:
            s.sendto(b"x" * size, (host, port))
            print(s.recv(256).decode())
            return
        except TimeoutError:
            continue
        except OSError as exc:
            print(f"ERR {exc.__class__.__name__} {exc.errno}")
            return
    print("ERR timeout")


def http(host: str, port: int, count: int, retry: float = 20) -> None:
    def once() -> str:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        _, _, body = data.partition(b"\r\n\r\n")
        return (body.decode(errors="replace").splitlines() or ["ERR empty"])[0]

    _probe(once, count, retry)


def say(host: str, port: int, text: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(text.encode() + b"\n")
            print(s.recv(4096).decode().strip() or "ERR closed", flush=True)
    except OSError as exc:
        print(f"ERR {exc.__class__.__name__}", flush=True)


def hold(host: str, port: int) -> None:
    s = socket.create_connection((host, port), timeout=5)
    print("connected", flush=True)
    for line in sys.stdin:
        try:
            s.sendall(line.encode())
            print(s.recv(4096).decode().strip() or "ERR closed", flush=True)
        except OSError as exc:
            print(f"ERR {exc.__class__.__name__}", flush=True)


def load(host: str, port: int, path: str) -> None:
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    ok = failed = 0
    bodies: dict[str, int] = {}
    failures: list[str] = []
    t0 = time.monotonic()
    while not stop.is_set():
        reply = ""
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " not in status + " ":
                reply = f"status {status!r}"
            else:
                text = body.decode(errors="replace").strip()
                bodies[text] = bodies.get(text, 0) + 1
        except OSError as exc:
            reply = f"{exc.__class__.__name__} {exc}"
        if reply and ok == 0:
            time.sleep(0.05)  # not answering yet: the count starts with the first reply
        elif reply:
            failed += 1
            if len(failures) < 20:
                failures.append(f"{time.monotonic() - t0:.2f}s {reply}")
        else:
            if ok == 0:
                print("started", flush=True)
            ok += 1
        time.sleep(0.005)  # a steady stream that leaves the 2 cores to the system
    print(json.dumps({"ok": ok, "failed": failed, "bodies": bodies,
                      "failures": failures, "seconds": round(time.monotonic() - t0, 2)}),
          flush=True)


def main(argv: list[str]) -> None:
    cmd, *rest = argv
    if cmd == "serve":
        serve(rest[0], int(rest[1]))
    elif cmd == "tcp":
        tcp(rest[0], int(rest[1]), int(rest[2]), float(rest[3]) if len(rest) > 3 else 20)
    elif cmd == "udp":
        udp(rest[0], int(rest[1]), int(rest[2]))
    elif cmd == "http":
        http(rest[0], int(rest[1]), int(rest[2]), float(rest[3]) if len(rest) > 3 else 20)
    elif cmd == "say":
        say(rest[0], int(rest[1]), rest[2])
    elif cmd == "echo":
        echo(rest[0], int(rest[1]))
    elif cmd == "hold":
        hold(rest[0], int(rest[1]))
    elif cmd == "load":
        load(rest[0], int(rest[1]), rest[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
