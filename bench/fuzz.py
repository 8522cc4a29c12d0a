"""Fuzz every input surface at volume and print, per surface, cases, crashes and partial writes.

The same strategies and verdicts as tests/fuzz (which run a few hundred derandomized cases
each), at ten thousand and more cases per surface, from a seed printed so a run can be
replayed:

* ``manifests``: ``swctl apply``'s parse, admission, plan and write as a library call
  against a real etcd (the keyspace compared before and after every refused apply);
* ``manifests-swctl``: the real ``swctl apply -f`` on a sample of them;
* ``compose``: the corpus's stack files mutated, and hostile YAML, through ``stack
  convert``'s loader, converter and admission;
* ``cli``: every safe verb's argparse surface with random flags and values, in-process
  through ``shoal.cli.main`` against the same etcd; ``cli-swctl``: a sample as real
  processes;
* ``etcd``: values and keys of every kind read back the way lists, watches, describe and
  get read them; ``etcd-live``: garbage written under every kind's prefix while a real
  controller-manager and agent run, then a service scaled beside it must converge.

    python -m bench.fuzz                      # 10,000 per surface, 300 per real-process one
    python -m bench.fuzz --cases 500 --seed 7 --surfaces compose,etcd
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench.common import load_average, say
from shoal.cli import keyring
from shoal.crds import kinds, sealed
from shoal.store import client, codec, etcd_server
from tests.fuzz import strategies, surfaces

SURFACES = ("manifests", "manifests-swctl", "compose", "cli", "cli-swctl", "etcd",
            "etcd-live")
SUBPROCESS_SURFACES = ("manifests-swctl", "cli-swctl")
PROGRESS_EVERY = 50


class Tally:
    """Verdicts of one surface, and the first few bad ones in full."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: collections.Counter[str] = collections.Counter()
        self.bad: list[str] = []
        self.kinds: collections.Counter[str] = collections.Counter()
        self.started = time.monotonic()

    def add(self, verdict: surfaces.Verdict) -> None:
        self.counts[verdict.outcome] += 1
        done = sum(self.counts.values())
        if done % PROGRESS_EVERY == 0:
            say(f"  {self.name}: {done} cases ({time.monotonic() - self.started:.0f} s)")
        if verdict.bad:
            # One example of each distinct failure (by its last line), up to ten.
            last = (verdict.detail.strip().splitlines() or [""])[-1]
            self.kinds[last] += 1
            if self.kinds[last] == 1 and len(self.bad) < 10:
                self.bad.append(f"[{verdict.outcome}] {verdict.detail}")

    def report(self) -> None:
        cases = sum(self.counts.values())
        say(f"{self.name:16} cases {cases:6}  accepted {self.counts[surfaces.OK]:6}  "
            f"refused {self.counts[surfaces.ERROR]:6}  crashes {self.counts[surfaces.CRASH]}"
            f"  partial writes {self.counts[surfaces.PARTIAL]}  hangs "
            f"{self.counts[surfaces.HANG]}  ({time.monotonic() - self.started:.0f} s)")
        for last, count in self.kinds.most_common():
            say(f"    {count} x {last[:200]}")
        for line in self.bad:
            say("    " + line.replace("\n", "\n    ")[:3000])


def run_cases(strategy: st.SearchStrategy[Any], cases: int, seed_value: int,
              case: Callable[[Any], None]) -> None:
    """``case`` on ``cases`` generated inputs (never raising: nothing to shrink)."""
    @seed(seed_value)
    @settings(max_examples=cases, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(strategy)
    def body(value: Any) -> None:
        case(value)
    body()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per surface")
    parser.add_argument("--process-cases", type=int, default=300,
                        help="cases per surface that starts swctl for each")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--surfaces", default=",".join(SURFACES))
    args = parser.parse_args()
    chosen = [s for s in args.surfaces.split(",") if s]
    unknown = set(chosen) - set(SURFACES)
    if unknown:
        parser.error(f"unknown surfaces {sorted(unknown)}; choose from {', '.join(SURFACES)}")
    work = Path(tempfile.mkdtemp(prefix="shoal-fuzz-"))
    say(f"bench/fuzz: seed {args.seed}, {args.cases} cases per surface "
        f"({args.process_cases} for real swctl processes); load {load_average()}")
    # SIGTERM ends the run through the finally below, so its etcd is not left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    server = etcd_server.EtcdServer(work / "etcd")
    server.start()
    tallies: list[Tally] = []
    try:
        for name in chosen:
            cases = args.process_cases if name in SUBPROCESS_SURFACES else args.cases
            tally = Tally(name)
            tallies.append(tally)
            RUNNERS[name](tally, cases, args.seed, server, work / name)
            tally.report()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    say(f"total: {sum(sum(t.counts.values()) for t in tallies)} cases, "
        f"{sum(t.counts[surfaces.CRASH] for t in tallies)} crashes, "
        f"{sum(t.counts[surfaces.PARTIAL] for t in tallies)} partial writes, "
        f"{sum(t.counts[surfaces.HANG] for t in tallies)} hangs; load {load_average()}")


def _keyring(work: Path) -> Path:
    path = work / "keyring.json"
    sealed.ensure(path)
    return path


def _env(server: etcd_server.EtcdServer, work: Path, prefix: str) -> dict[str, str]:
    return {"SHOAL_ETCD": server.url, "SHOAL_PREFIX": prefix,
            "SHOAL_KEYRING": str(_keyring(work)), "SHOAL_DATA_DIR": str(work)}


def manifests(tally: Tally, cases: int, seed_value: int, server: etcd_server.EtcdServer,
              work: Path) -> None:
    work.mkdir(parents=True)
    ring = keyring.Source(_keyring(work))
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(client.Store.connect(server.url, prefix="/fuzz-apply"))
    namespaces = st.sampled_from([None, "default", "other"])
    try:
        run_cases(st.tuples(strategies.manifest_input(), namespaces), cases, seed_value,
                  lambda c: tally.add(loop.run_until_complete(
                      surfaces.apply_library(store, c[0], ring, c[1]))))
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def manifests_swctl(tally: Tally, cases: int, seed_value: int,
                    server: etcd_server.EtcdServer, work: Path) -> None:
    work.mkdir(parents=True)
    env = dict(os.environ, **_env(server, work, "/fuzz-apply-swctl"))
    env.pop("SHOAL_DEBUG", None)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(client.Store.connect(server.url,
                                                         prefix="/fuzz-apply-swctl"))

    def case(docs: Any) -> None:
        path = work / "fuzz.yaml"
        path.write_text(docs if isinstance(docs, str) else surfaces.to_yaml(docs),
                        errors="surrogateescape")
        before = loop.run_until_complete(surfaces.snapshot(store))
        code, _, stderr = surfaces.run_swctl(["apply", "-f", str(path), "--detach"], env,
                                             work)
        verdict = surfaces.exit_verdict(code, stderr)
        if verdict.outcome == surfaces.ERROR and \
                loop.run_until_complete(surfaces.snapshot(store)) != before:
            verdict = surfaces.Verdict(surfaces.PARTIAL, stderr)
        tally.add(verdict)
    try:
        run_cases(strategies.manifest_input(), cases, seed_value, case)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def compose(tally: Tally, cases: int, seed_value: int, server: etcd_server.EtcdServer,
            work: Path) -> None:
    work.mkdir(parents=True)
    run_cases(strategies.compose_file(), cases, seed_value,
              lambda data: tally.add(surfaces.compose_convert(data, work)))


def cli(tally: Tally, cases: int, seed_value: int, server: etcd_server.EtcdServer,
        work: Path) -> None:
    work.mkdir(parents=True)
    env = dict(_env(server, work, "/fuzz-argv"), SHOAL_DEBUG="")
    run_cases(strategies.cli_argv(strategies.safe_verb), cases, seed_value,
              lambda argv: tally.add(surfaces.cli_in_process(argv, env)))


def cli_swctl(tally: Tally, cases: int, seed_value: int, server: etcd_server.EtcdServer,
              work: Path) -> None:
    work.mkdir(parents=True)
    env = dict(os.environ, **_env(server, work, "/fuzz-argv-swctl"))
    env.pop("SHOAL_DEBUG", None)

    def case(argv: list[str]) -> None:
        code, _, stderr = surfaces.run_swctl(argv, env, work)
        verdict = surfaces.exit_verdict(code, stderr)
        verdict.detail = f"{argv}: {verdict.detail}"
        tally.add(verdict)
    run_cases(strategies.cli_argv(strategies.safe_verb), cases, seed_value, case)


_INFOS = sorted(kinds.Registry.builtin().all(), key=lambda i: i.plural)


@st.composite
def _stored(draw: st.DrawFn) -> tuple[kinds.KindInfo, bytes, bytes]:
    info = draw(st.sampled_from(_INFOS))
    name = draw(st.sampled_from(["web", "x", "ünï", "a.b"]))
    ns = "default" if info.namespaced else None
    value = draw(strategies.etcd_value(info.kind, name, ns))
    key = codec.object_key("/p", info, name, ns) if draw(st.booleans()) else (
        codec.kind_prefix("/p", info) + draw(st.binary(max_size=12)))
    return info, key, value


def etcd_bytes(tally: Tally, cases: int, seed_value: int, server: etcd_server.EtcdServer,
               work: Path) -> None:
    run_cases(_stored(), cases, seed_value,
              lambda c: tally.add(surfaces.decode_and_key(c[0], "/p", c[1], c[2])))


def etcd_live(tally: Tally, cases: int, seed_value: int, server: etcd_server.EtcdServer,
              work: Path) -> None:
    """``cases`` garbage values written under every kind's prefix while a real
    controller-manager and agent run; then a good service must scale. One case per value
    (OK once the whole run passed), the run's failure counted against all of them."""
    from tests.integration.orchestration_support import Cluster

    work.mkdir(parents=True)
    values: list[tuple[kinds.KindInfo, bytes, bytes]] = []
    run_cases(_stored(), cases, seed_value, values.append)

    async def run() -> surfaces.Verdict:
        prefix = "/fuzz-live"
        async with Cluster.open(server.url, prefix, work) as cluster:
            agent = cluster.start_agent("b", count=2)
            manager = cluster.start_manager()
            await cluster.wait_ready(["b-0", "b-1"], timeout=60)
            await cluster.apply("good", {"replicas": 2, "template": {"image": "busybox"}})
            await cluster.wait_running("good", 2, timeout=60)
            for i, (info, key, value) in enumerate(values):
                # Under this cluster's prefix, with a name of its own per case.
                rest = key[len(codec.kind_prefix("/p", info)):]
                real = codec.kind_prefix(prefix, info) + rest + f"-{i}".encode()
                await cluster.store.raw_put(real, value.replace(b'"web"', f'"web-{i}"'.encode()))
            await cluster.scale("good", 6)
            await cluster.wait_running("good", 6, timeout=120)
            await cluster.apply("after", {"replicas": 2, "template": {"image": "busybox"}})
            await cluster.wait_running("after", 2, timeout=120)
            if manager.popen.poll() is not None or agent.popen.poll() is not None:
                return surfaces.Verdict(surfaces.CRASH, "controller-manager or agent died")
            return surfaces.Verdict(surfaces.OK)
    try:
        verdict = asyncio.run(run())
    except Exception as exc:
        verdict = surfaces.Verdict(surfaces.CRASH, f"{type(exc).__name__}: {exc}")
    for _ in values:
        tally.add(verdict)


RUNNERS: dict[str, Callable[[Tally, int, int, etcd_server.EtcdServer, Path], None]] = {
    "manifests": manifests, "manifests-swctl": manifests_swctl, "compose": compose,
    "cli": cli, "cli-swctl": cli_swctl, "etcd": etcd_bytes, "etcd-live": etcd_live}


if __name__ == "__main__":
    main()
