"""Store benchmark: informer ingest rate and compare-and-swap update throughput.

Each figure is printed beside its baseline measured in the same run against the same
etcd: ingest against the 20,000 objects/s target, CAS updates against raw etcd puts at
the same concurrency (target: at least 50 % of the raw rate).

    python bench/store.py [--objects 20000] [--concurrency 32] [--updates 5000] [--tls]
    python bench/store.py --tls-cost [--updates 5000] [--concurrency 32]

Ingest: a writer process creates the objects in batched transactions (as ``swctl apply``
does) while this process's informer catches them; the rate is objects divided by the
time from the writer's first write to the informer holding the last object.

Starts its own etcd in a temporary directory unless ``--etcd URL`` is given; with
``--tls`` that etcd serves https with client-certificate auth (a CA made for the run, as
``swctl init`` makes one), to measure what TLS costs the store.

``--tls-cost`` starts one plain and one TLS etcd side by side and alternates rounds of
CAS updates against each, reporting throughput and the CPU seconds per 1,000 updates
spent in this process and in etcd: on a shared machine the CPU cost is the steadier
figure, since throughput follows whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import secrets
import statistics
import sys
import tempfile
import time
import uuid

from shoal.crds import kinds, resource
from shoal.pki.bundle import Bundle
from shoal.runtime import informer as informer_mod
from shoal.store import client, etcd_server

BENCH_KIND = kinds.KindInfo("BenchItem", "benchitems", "benchitem", builtin=False,
                            group="bench.shoal.io")


def _item(i: int) -> resource.Resource:
    return resource.new("BenchItem", f"item-{i:06d}", "bench",
                        spec={"image": "shoal/busybox", "replicas": i % 7,
                              "command": ["httpd", "-f", "-p", "8080"],
                              "env": {"INDEX": str(i)}},
                        labels={"app": f"a{i % 10}"})


async def write_items(url: str, prefix: str, objects: int, writers: int,
                      tls: Bundle | None = None) -> None:
    """The writer side of the ingest run (what ``swctl apply`` does): batched creates."""
    store = await client.Store.connect(url, prefix=prefix, tls=tls)
    batches = [[client.Op("create", BENCH_KIND, _item(i))
                for i in range(start, min(start + 127, objects))]
               for start in range(0, objects, 127)]
    queue: asyncio.Queue[list[client.Op]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def writer() -> None:
        while not queue.empty():
            await store.commit(queue.get_nowait())

    started = time.time()
    print(f"START {started:.6f}", flush=True)
    await asyncio.gather(*(writer() for _ in range(writers)))
    print(f"DONE {time.time() - started:.6f} {len(batches)}", flush=True)
    await store.close()


async def ingest(store: client.Store, objects: int, writers: int) -> float:
    """Objects/s from the first write until an informer's cache holds all of them.

    The writer is a separate process, as ``swctl apply`` is in real use, so the figure is
    the informer's and etcd's, not the writer's encoding competing for the same core.
    """
    factory = informer_mod.SharedInformerFactory(store)
    inf = factory.informer(BENCH_KIND)
    done = asyncio.Event()
    finished_at = 0.0

    def on_change(*_: object) -> None:
        nonlocal finished_at
        if not done.is_set() and len(inf) >= objects:
            finished_at = time.time()
            done.set()

    inf.add_handlers(on_add=on_change)
    factory.start()
    await inf.wait_synced()
    tls = store.etcd.tls
    tls_args = ["--etcd-ca", str(tls.ca), "--etcd-cert", str(tls.cert),
                "--etcd-key", str(tls.key)] if tls is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--write-only", "--etcd", store.url, "--prefix", store.prefix,
        "--objects", str(objects), "--writers", str(writers), *tls_args,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    out = (await proc.stdout.readline()).decode().split()
    started = float(out[1])
    await asyncio.wait_for(done.wait(), timeout=120)
    tail = (await proc.stdout.read()).decode().split()
    await proc.wait()
    written, txns = float(tail[1]), int(tail[2])
    await factory.stop()
    print(f"  writer process: {objects} objects in {written:.2f}s ({objects / written:,.0f}/s) "
          f"in {txns} transactions")
    return objects / (finished_at - started)


async def _run_concurrent(count: int, concurrency: int, work: object) -> float:
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await work(i)  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def cas_vs_raw(store: client.Store, updates: int, concurrency: int) -> tuple[float, float]:
    keys = 256
    base = 1_000_000 + 1000 * secrets.randbelow(1000)
    objs = [await store.create(BENCH_KIND, _item(base + i)) for i in range(keys)]
    latest: dict[int, resource.Resource] = dict(enumerate(objs))
    # One object per worker slot, so CAS measures the write path, not conflict retries.
    raw_value = b'{"apiVersion":"bench.shoal.io/v1","kind":"BenchItem","metadata":{}}'

    async def raw_put(i: int) -> None:
        await store.etcd.put(store.raw_key("bench-raw", str(i % keys)), raw_value)

    async def cas_update(i: int) -> None:
        slot = i % keys
        obj = latest[slot]
        obj.status["count"] = i
        latest[slot] = await store.update(BENCH_KIND, obj)

    # Interleave rounds so both see the same etcd state (db size, compaction, page
    # cache) and take each one's median: one noisy round should not decide the ratio.
    raws, cases = [], []
    for _ in range(3):
        raws.append(await _run_concurrent(updates, concurrency, raw_put))
        cases.append(await _run_concurrent(updates, concurrency, cas_update))
    return statistics.median(raws), statistics.median(cases)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def tls_cost(updates: int, concurrency: int, data_dir: str | None, rounds: int = 5) -> None:
    """CAS update throughput and CPU per 1,000 updates, plain vs TLS, interleaved rounds."""
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(dir=data_dir)))
        plain = etcd_server.EtcdServer(tmp / "plain" / "data")
        tls_cluster = etcd_server.EtcdCluster(tmp / "tls", 1, tls=True)
        secure = tls_cluster.members[0]
        for server in (plain, secure):
            server.start()
            stack.callback(server.stop)
        stores = {
            "plain": (await client.Store.connect(plain.url, prefix="/bench-tls"), plain),
            "tls": (await client.Store.connect(secure.url, prefix="/bench-tls",
                                               tls=tls_cluster.client_bundle()), secure)}
        objs: dict[str, dict[int, resource.Resource]] = {}
        for name, (store, _) in stores.items():
            objs[name] = {i: await store.create(BENCH_KIND, _item(i)) for i in range(256)}
        results: dict[str, list[tuple[float, float, float]]] = {"plain": [], "tls": []}
        for _ in range(rounds):
            for name, (store, server) in stores.items():
                latest = objs[name]

                async def update(i: int, store: client.Store = store,
                                 latest: dict[int, resource.Resource] = latest) -> None:
                    obj = latest[i % 256]
                    obj.status["count"] = i
                    latest[i % 256] = await store.update(BENCH_KIND, obj)

                assert server.proc is not None
                mine, theirs = time.process_time(), _cpu_seconds(server.proc.pid)
                rate = await _run_concurrent(updates, concurrency, update)
                per_k = 1000 / updates
                results[name].append((rate, (time.process_time() - mine) * per_k,
                                      (_cpu_seconds(server.proc.pid) - theirs) * per_k))
        for store, _ in stores.values():
            await store.close()
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        client_cpu = statistics.median(r[1] for r in rows)
        etcd_cpu = statistics.median(r[2] for r in rows)
        print(f"{name:5}: CAS {rate:,.0f} updates/s at concurrency {concurrency}; CPU per "
              f"1,000 updates: client {client_cpu * 1000:.0f} ms, etcd {etcd_cpu * 1000:.0f} ms "
              f"(medians of {rounds} rounds of {updates})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd")
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--updates", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--data-dir", default=None,
                        help="parent folder for the bench etcd's data (e.g. /dev/shm to keep "
                             "disk contention from other processes out of the figure)")
    parser.add_argument("--tls-cost", action="store_true",
                        help="compare CAS throughput and CPU cost, plain vs TLS etcd")
    parser.add_argument("--tls", action="store_true",
                        help="the bench etcd serves https with client-certificate auth")
    parser.add_argument("--etcd-ca", help=argparse.SUPPRESS)
    parser.add_argument("--etcd-cert", help=argparse.SUPPRESS)
    parser.add_argument("--etcd-key", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tls_cost:
        await tls_cost(args.updates, args.concurrency, args.data_dir)
        return
    tls = Bundle.from_options(args.etcd_ca, args.etcd_cert, args.etcd_key)
    if args.write_only:
        await write_items(args.etcd, args.prefix, args.objects, args.writers, tls)
        return
    server = None
    with contextlib.ExitStack() as stack:
        url = args.etcd
        if url is None:
            tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.data_dir)))
            if args.tls:
                tls_cluster = etcd_server.EtcdCluster(tmp, 1, tls=True)
                server = tls_cluster.members[0]
                tls = tls_cluster.client_bundle("root")
            else:
                server = etcd_server.EtcdServer(tmp / "data")
            server.start()
            stack.callback(server.stop)
            url = server.url
        store = await client.Store.connect(url, prefix=f"/bench-{uuid.uuid4().hex[:8]}",
                                           tls=tls)
        try:
            where = f"data in {args.data_dir or tempfile.gettempdir()}" if server else "external"
            print(f"etcd {url} ({where})")
            rate = await ingest(store, args.objects, args.writers)
            print(f"informer ingest: {rate:,.0f} objects/s for {args.objects} objects "
                  f"(target >= 20,000/s) -> {'PASS' if rate >= 20_000 else 'FAIL'}")
            raw, cas = await cas_vs_raw(store, args.updates, args.concurrency)
            ratio = cas / raw
            print(f"raw etcd put:     {raw:,.0f} puts/s at concurrency {args.concurrency} "
                  "(baseline)")
            print(f"CAS update:       {cas:,.0f} updates/s at concurrency {args.concurrency} "
                  f"= {ratio:.0%} of raw (target >= 50%) -> {'PASS' if ratio >= 0.5 else 'FAIL'}")
        finally:
            await store.etcd.delete_prefix(store.prefix.encode() + b"/")
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
