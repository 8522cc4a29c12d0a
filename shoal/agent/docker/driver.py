"""The ``docker`` executor driver: one container per task, through the docker SDK.

Containers run in network mode ``none`` (the agent plumbs task networking into their
namespace, as a CNI plugin would) and carry the ``shoal.io/*`` labels of their task; the
labels, not the container name, are the identity: every call finds the container of a
task by ``shoal.io/task-uid`` + ``shoal.io/node``, so an agent restarted between any two
calls adopts what is there instead of creating a duplicate. Names are the task name
(``web.1.<id>``, readable in ``docker ps``); if a foreign container already holds the
name, the task uid is appended rather than failing.

The docker SDK is blocking. Short calls run on a dedicated thread pool sized to the
SDK's HTTP connection pool (so 50 concurrent starts are not throttled by the asyncio
default executor, nor starve it); the create-start-inspect sequence of one task is one
pool job, so a start costs one thread hop. Long-lived streams — the event stream behind
:meth:`DockerExecutor.changes` and followed logs — get their own threads, since they
would pin a pool worker for their whole life. Waiting out a stop grace period never
blocks a thread either: ``stop`` sends the signal, then awaits the container's ``die``
event (re-inspecting once a second in case the event stream is down), then SIGKILLs.
This is exactly ``docker stop``'s sequence, but with fractional grace periods and any
signal — the stop API only gained a signal parameter in API 1.42, and Shoal talks 1.41
so that Debian's dockerd 20.10 works.

Containers are created with ``NetworkDisabled`` as well as network mode ``none``: dockerd
then creates no libnetwork sandbox or endpoint for them, and runc gives each a fresh
network namespace with only loopback up — exactly what the agent wants to plumb. Besides
saving work on every start and stop, this avoids a lock-order deadlock in dockerd 20.10's
libnetwork (``getSvcRecords`` against ``processEndpointDelete``, moby/moby#46661, fixed
only after 20.10.24) that concurrent container exits trigger: seen here while tearing
down 50 containers at once, after which dockerd never answered a container call again.
The price: dockerd writes no ``/etc/hosts`` or ``/etc/resolv.conf`` into the container;
the test image carries its own ``/etc/hosts``, and DNS configuration is the agent's, as
the rest of task networking is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import docker.types.daemon
import structlog

from shoal.agent.docker.dockerd import docker_url
from shoal.agent.docker.image import split_image_ref
from shoal.agent.exec import changefeed, workload
from shoal.agent.exec.executor import (
    LABEL_NAMESPACE,
    LABEL_NODE,
    LABEL_TASK,
    LABEL_TASK_UID,
    MISSING,
    LogLine,
    Managed,
    Observed,
    TaskRejectedError,
    TaskSpec,
)
from shoal.agent.exec.workload import parse_timestamp
from shoal.crds import template as tpl

log = structlog.get_logger(__name__)

T = TypeVar("T")

API_VERSION = "1.41"  # dockerd 20.10 (Debian 12); every later dockerd still serves it
_EVENTS = ("start", "die", "oom", "health_status", "destroy")
_STREAMS = {0: "stdout", 1: "stdout", 2: "stderr"}  # 0 is stdin, never sent for logs


def observed_from_inspect(info: dict[str, Any]) -> Observed:
    """Map ``docker inspect`` output to what the task manager needs."""
    state = info.get("State") or {}
    status = state.get("Status", "")
    health = (state.get("Health") or {}).get("Status") or "none"
    if health not in ("starting", "healthy", "unhealthy"):
        health = "none"
    error = state.get("Error") or ""
    if state.get("OOMKilled"):
        error = error or "container killed: out of memory"
    cid = info.get("Id", "")
    pid = state.get("Pid") or None
    if status == "created":
        if error:  # the start failed (bad executable...): it will never run by itself
            return Observed("exited", exit_code=state.get("ExitCode") or None, error=error,
                            workload_id=cid)
        return Observed("created", health=health, workload_id=cid)
    if status in ("running", "paused", "restarting"):
        return Observed("running", health=health, workload_id=cid, pid=pid)
    # Docker leaves the last health status (often "unhealthy", set as it stopped) on an
    # exited container; only a running workload has a health worth acting on.
    return Observed("exited", exit_code=state.get("ExitCode"), error=error,
                    workload_id=cid)


def read_frames(read: Callable[[int], bytes]) -> Iterator[tuple[str, bytes]]:
    """Docker's multiplexed stream: an 8-byte header (stream, 0, 0, 0, big-endian length)
    then the payload. Reading exactly what each frame announces never waits for bytes
    that have not been written yet, which matters when following logs."""
    while True:
        header = _read_exactly(read, 8)
        if len(header) < 8:
            return
        kind, length = struct.unpack(">BxxxL", header)
        payload = _read_exactly(read, length)
        if len(payload) < length:
            return
        yield _STREAMS.get(kind, "stdout"), payload


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def frame_lines(stream: str, payload: bytes, timestamps: bool) -> list[LogLine]:
    """One log frame as LogLines: json-file sends one line per frame, prefixed by its
    timestamp when asked; a frame holding several lines shares that timestamp."""
    stamp: float | None = None
    if timestamps:
        head, _, rest = payload.partition(b" ")
        try:
            stamp = parse_timestamp(head)
            payload = rest
        except ValueError:
            stamp = None
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    return [LogLine(stream, line, stamp) for line in payload.split(b"\n")]


@dataclasses.dataclass
class _LogPump:
    """A logs request read on its own thread, handed to the loop in batches."""

    queue: asyncio.Queue[list[LogLine] | BaseException | None]
    slots: threading.Semaphore  # back-pressure: at most this many batches in flight
    stop: threading.Event
    response: Any = None


class DockerExecutor:
    """Executor driver over dockerd; one instance serves one node."""

    name = "docker"

    def __init__(self, node: str, base_url: str | None = None, *, max_workers: int = 32,
                 api_version: str = API_VERSION) -> None:
        self.node = node
        self.base_url = base_url or docker_url()
        self._api_version = api_version
        self._max_workers = max_workers
        # Pool size == HTTP connection pool size, so no pool worker waits for a connection.
        self._api = docker.APIClient(base_url=self.base_url, version=api_version,
                                     max_pool_size=max_workers, timeout=120)
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix=f"docker-{node}")
        self._ids: dict[str, str] = {}  # task uid -> container id (a cache; labels rule)
        self._locks: dict[str, asyncio.Lock] = {}
        self._images: dict[str, asyncio.Future[None]] = {}
        self._feed = changefeed.ChangeFeed()
        self._dead: dict[str, asyncio.Event] = {}  # container id -> set when it dies
        self._background: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_thread: threading.Thread | None = None
        self._events_stream: Any = None
        self._closed = threading.Event()
        self._log = log.bind(node=node, driver="docker")

    # -- plumbing -----------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def _uid_filter(self, uid: str) -> dict[str, Any]:
        return {"label": [f"{LABEL_TASK_UID}={uid}", f"{LABEL_NODE}={self.node}"]}

    def _find_blocking(self, uid: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._api.containers(all=True,
                                                           filters=self._uid_filter(uid))
        return found

    async def _container_id(self, uid: str) -> str | None:
        cid = self._ids.get(uid)
        if cid:
            return cid
        found = await self._call(self._find_blocking, uid)
        if not found:
            return None
        cid = str(found[0]["Id"])
        self._ids[uid] = cid
        return cid

    async def _inspect(self, uid: str) -> dict[str, Any] | None:
        """The task's container, found through the cache and re-found if that was stale."""
        for _ in range(2):
            cid = await self._container_id(uid)
            if cid is None:
                return None
            try:
                info: dict[str, Any] = await self._call(self._api.inspect_container, cid)
                return info
            except docker.errors.NotFound:
                self._ids.pop(uid, None)  # removed behind our back: look it up by label
        return None

    # -- images -------------------------------------------------------------------------

    async def prepare(self, task: TaskSpec) -> None:
        with workload.rejecting():
            image = tpl.image(task.template)
        await self._ensure_image(image, task)

    async def _ensure_image(self, image: str, task: TaskSpec) -> None:
        # Fifty tasks of one service prepare at once: one inspect (or pull) serves all.
        pending = self._images.get(image)
        if pending is None:
            pending = asyncio.ensure_future(self._call(self._ensure_image_blocking, image, task))
            self._images[image] = pending
            pending.add_done_callback(functools.partial(self._image_checked, image))
        await asyncio.shield(pending)
        self._log.debug("image ready", task=task.name, task_uid=task.uid, image=image)

    def _image_checked(self, image: str, future: asyncio.Future[None]) -> None:
        self._images.pop(image, None)
        if not future.cancelled():
            future.exception()  # every waiter got it already; don't warn "never retrieved"

    def _ensure_image_blocking(self, image: str, task: TaskSpec) -> None:
        try:
            self._api.inspect_image(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code and 400 <= exc.status_code < 500:
                raise TaskRejectedError(f"image {image}: {_explain(exc)}") from exc
            raise
        repository, tag = split_image_ref(image)
        log.info("pulling image", node=self.node, image=image, task=task.name,
                 task_uid=task.uid)
        try:
            for message in self._api.pull(repository, tag=tag or "latest", stream=True,
                                          decode=True):
                if isinstance(message, dict) and message.get("error"):
                    raise TaskRejectedError(
                        f"image {image} not found: {message['error']}")
        except docker.errors.APIError as exc:
            raise TaskRejectedError(f"image {image} not found: {_explain(exc)}") from exc
        try:
            self._api.inspect_image(image)
        except docker.errors.ImageNotFound as exc:
            raise TaskRejectedError(f"image {image} not found after pulling it") from exc

    # -- lifecycle ----------------------------------------------------------------------

    def _create_kwargs(self, task: TaskSpec, image_cmd: list[str] | None) -> dict[str, Any]:
        """The container to create; TaskRejectedError for a template that cannot run."""
        with workload.rejecting():
            return self._container_config(task, image_cmd)

    def _container_config(self, task: TaskSpec, image_cmd: list[str] | None) -> dict[str, Any]:
        template = task.template
        entrypoint, cmd = tpl.command(template).resolve(image_cmd)
        res = tpl.resources(template)
        mounts = [docker_mount(m) for m in tpl.mounts(template)]
        # Secrets and configs: files on the agent's tmpfs, never copied into the container.
        mounts += [docker.types.Mount(target=f.target, source=f.source, type="bind",
                                      read_only=True) for f in task.files]
        caps = tpl.capabilities(template)
        host_config = self._api.create_host_config(
            network_mode="none",
            mounts=mounts or None,
            nano_cpus=res.limit_nano_cpus,
            mem_limit=res.limit_memory,
            mem_reservation=res.reserve_memory,
            restart_policy={"Name": "no"},  # restarts are the orchestrator's decision
            init=tpl.init(template),
            cap_add=list(caps.add) or None,
            cap_drop=list(caps.drop) or None,
            sysctls=tpl.sysctls(template) or None,
            ulimits=[docker.types.Ulimit(name=u.name, soft=u.soft, hard=u.hard)
                     for u in tpl.ulimits(template)] or None,
        )
        kwargs: dict[str, Any] = {
            "image": tpl.image(template),
            "command": cmd,
            "entrypoint": entrypoint,
            "environment": [f"{k}={v}" for k, v in tpl.env(template).items()],
            "working_dir": tpl.workdir(template),
            "user": tpl.user(template),
            "hostname": tpl.hostname(template),
            "labels": workload.task_labels(task),
            "stop_signal": tpl.stop_signal(template),
            "stop_timeout": math_ceil(tpl.stop_grace(template)),
            "healthcheck": workload.docker_healthcheck(template),
            # No libnetwork sandbox at all (see the module docstring): runc still gives
            # the container its own network namespace with loopback up.
            "network_disabled": True,
            "host_config": host_config,
        }
        if kwargs["stop_signal"]:
            workload.signal_number(kwargs["stop_signal"])  # reject unknown names early
        return kwargs

    def _start_blocking(self, task: TaskSpec) -> dict[str, Any]:
        """Adopt, or create + start; the inspect of the result. One pool job."""
        for found in self._find_blocking(task.uid):
            cid = str(found["Id"])
            try:
                info: dict[str, Any] = self._api.inspect_container(cid)
            except docker.errors.NotFound:
                continue  # a create rolled back as its client died: not a container
            state = info["State"]
            if state["Status"] == "created" and not state.get("Error"):
                # Killed between create and start last time: finish the job.
                self._start_container(cid, task)
                info = self._api.inspect_container(cid)
            return info
        image_cmd: list[str] | None = None
        with workload.rejecting():
            if tpl.command(task.template).uses_image_cmd:
                config = self._api.inspect_image(tpl.image(task.template))["Config"] or {}
                image_cmd = list(config.get("Cmd") or [])
        kwargs = self._create_kwargs(task, image_cmd)
        cid = self._create(task, workload.workload_name(task.name), kwargs)
        self._start_container(cid, task)
        info = self._api.inspect_container(cid)
        return info

    def _create(self, task: TaskSpec, name: str, kwargs: dict[str, Any]) -> str:
        """Create the task's container, or return the one a racing start created."""
        names = [name, workload.workload_name(f"{task.name}.{task.uid}")]
        pulled = False
        for _ in range(10):
            try:
                created = self._api.create_container(name=names[0], **kwargs)
                return str(created["Id"])
            except docker.errors.ImageNotFound:
                if pulled:
                    raise
                # Removed since prepare(): pull again (or reject), then retry.
                self._ensure_image_blocking(kwargs["image"], task)
                pulled = True
            except docker.errors.APIError as exc:
                if exc.status_code == 400:  # invalid mount, bad user... never going to work
                    raise TaskRejectedError(_explain(exc)) from exc
                if exc.status_code != 409:
                    raise
                owner = self._name_owner(names[0])
                if owner is None:
                    continue  # the holder vanished (a create rolled back): try again
                if owner[1] == task.uid:
                    return owner[0]  # a racing start of this very task created it
                if len(names) == 1:
                    raise
                names.pop(0)  # a stranger holds the name: use the uid-suffixed one
        raise RuntimeError(f"could not create a container for task {task.name}")

    def _name_owner(self, name: str) -> tuple[str, str] | None:
        """(container id, task uid label) of the container holding ``name``.

        dockerd reserves a name before the container is listed, so a racing create can
        see the name taken yet find nothing by label: wait for the holder to appear.
        """
        for _ in range(50):
            try:
                info = self._api.inspect_container(name)
            except docker.errors.NotFound:
                time.sleep(0.02)
                continue
            labels = info["Config"].get("Labels") or {}
            return str(info["Id"]), str(labels.get(LABEL_TASK_UID, ""))
        return None

    def _start_container(self, cid: str, task: TaskSpec) -> None:
        try:
            self._api.start(cid)
        except docker.errors.APIError as exc:
            if exc.status_code == 304:  # already started
                return
            # The runtime refused (executable not found...): docker records the error in
            # State.Error, which the inspect that follows turns into an exited Observed.
            log.info("container start failed", node=self.node, container=cid[:12],
                     task=task.name, task_uid=task.uid, error=_explain(exc))

    async def start(self, task: TaskSpec) -> Observed:
        logger = self._log.bind(task=task.name, task_uid=task.uid)
        async with self._lock(task.uid):
            t0 = time.monotonic()
            try:
                info = await self._call(self._start_blocking, task)
            except docker.errors.ImageNotFound as exc:
                raise TaskRejectedError(f"image not found: {_explain(exc)}") from exc
            self._ids[task.uid] = info["Id"]
            observed = observed_from_inspect(info)
            logger.info("container started", container=info["Id"][:12],
                        state=observed.state, error=observed.error or None,
                        seconds=round(time.monotonic() - t0, 3))
            return observed

    async def observe(self, task_uid: str) -> Observed:
        info = await self._inspect(task_uid)
        return MISSING if info is None else observed_from_inspect(info)

    async def stop(self, task_uid: str, grace: float, signal: str | None = None) -> None:
        logger = self._log.bind(task_uid=task_uid)
        info = await self._inspect(task_uid)
        if info is None or not info["State"].get("Running"):
            return
        cid = info["Id"]
        labels = info["Config"].get("Labels") or {}
        logger = logger.bind(task=labels.get(LABEL_TASK), container=cid[:12])
        sig = signal or info["Config"].get("StopSignal") or "SIGTERM"
        dead = self._dead.setdefault(cid, asyncio.Event())
        self._ensure_events()
        t0 = time.monotonic()
        try:
            if await self._kill(cid, sig) and not await self._wait_dead(cid, dead, grace):
                logger.info("grace period over, killing", signal=sig, grace=grace)
                if await self._kill(cid, "SIGKILL"):
                    await self._wait_dead(cid, dead, 30.0)
        finally:
            self._dead.pop(cid, None)
        logger.info("container stopped", signal=sig, seconds=round(time.monotonic() - t0, 3))

    async def _kill(self, cid: str, sig: str) -> bool:
        """Send ``sig``; False when there is nothing (left) to signal."""
        try:
            await self._call(self._api.kill, cid, signal=sig)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "is not running"
                return False
            raise

    async def _wait_dead(self, cid: str, dead: asyncio.Event, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await self._call(self._api.inspect_container, cid)
            except docker.errors.NotFound:
                return True
            if not info["State"].get("Running"):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # The die event wakes us at once; the 1 s cap covers a broken event stream.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dead.wait(), min(remaining, 1.0))

    async def remove(self, task_uid: str) -> None:
        found = await self._call(self._find_blocking, task_uid)
        cached = self._ids.pop(task_uid, None)
        ids = {str(c["Id"]) for c in found} | ({cached} if cached else set())
        for cid in ids:
            try:
                # v=True: anonymous volumes go with the container; named ones stay.
                await self._call(self._api.remove_container, cid, v=True, force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "in progress" in str(exc):
                    continue
                raise
            self._log.info("container removed", task_uid=task_uid, container=cid[:12])
        self._locks.pop(task_uid, None)

    async def list_managed(self) -> list[Managed]:
        containers = await self._call(self._api.containers, all=True,
                                      filters={"label": [f"{LABEL_NODE}={self.node}"]})
        managed: list[Managed] = []
        for c in containers:
            labels = c.get("Labels") or {}
            uid = labels.get(LABEL_TASK_UID)
            if not uid:
                continue
            self._ids[uid] = c["Id"]
            managed.append(Managed(uid, labels.get(LABEL_TASK, ""),
                                   labels.get(LABEL_NAMESPACE, ""), c["Id"]))
        return managed

    # -- events -------------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[str]:
        async for uid in self._feed.follow(self._ensure_events):
            yield uid

    def _ensure_events(self) -> None:
        if self._events_thread is not None or self._closed.is_set():
            return
        self._loop = asyncio.get_running_loop()
        self._events_thread = threading.Thread(target=self._events_main, daemon=True,
                                               name=f"docker-events-{self.node}")
        self._events_thread.start()

    def _events_main(self) -> None:
        """Follow dockerd's events for this node's containers, reconnecting for ever."""
        client = docker.APIClient(base_url=self.base_url, version=self._api_version)
        since: float | None = None
        backoff = 0.2
        filters = {"type": ["container"], "event": list(_EVENTS),
                   "label": [f"{LABEL_NODE}={self.node}"]}
        try:
            while not self._closed.is_set():
                try:
                    stream = client.events(filters=filters, decode=True, since=since)
                    self._events_stream = stream
                    if since is not None:
                        self._post(self._resync)  # events may have been lost meanwhile
                    backoff = 0.2
                    for event in stream:
                        since = event.get("timeNano", 0) / 1e9 or since
                        self._post(functools.partial(self._dispatch, event))
                except Exception as exc:  # dockerd restarting, socket closed by close()
                    if self._closed.is_set():
                        break
                    log.warning("docker event stream broken", node=self.node, error=str(exc))
                if self._closed.wait(backoff):
                    break
                backoff = min(backoff * 2, 5.0)
                since = since or time.time()
        finally:
            client.close()

    def _post(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing under us
                loop.call_soon_threadsafe(fn)

    def _dispatch(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        uid = attributes.get(LABEL_TASK_UID)
        cid = actor.get("ID", "")
        action = str(event.get("Action", ""))
        if action in ("die", "destroy") and cid in self._dead:
            self._dead[cid].set()
        if not uid:
            return
        if action == "destroy":
            if self._ids.get(uid) == cid:
                self._ids.pop(uid, None)
        elif cid:
            self._ids[uid] = cid
        self._feed.publish(uid)

    def _resync(self) -> None:
        async def push_all() -> None:
            with contextlib.suppress(Exception):
                for managed in await self.list_managed():
                    self._feed.publish(managed.task_uid)
        task = asyncio.ensure_future(push_all())
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    # -- logs ---------------------------------------------------------------------------

    async def logs(self, task_uid: str, follow: bool = False, tail: int | None = None,
                   timestamps: bool = False) -> AsyncIterator[LogLine]:
        cid = await self._container_id(task_uid)
        if cid is None:
            return
        loop = asyncio.get_running_loop()
        pump = _LogPump(asyncio.Queue(), threading.Semaphore(64), threading.Event())
        params = {"stdout": 1, "stderr": 1, "follow": int(follow),
                  "timestamps": int(timestamps), "tail": "all" if tail is None else tail}
        thread = threading.Thread(
            target=self._logs_main, args=(cid, params, timestamps, pump, loop),
            daemon=True, name=f"docker-logs-{cid[:12]}")
        thread.start()
        try:
            while True:
                item = await pump.queue.get()
                pump.slots.release()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, docker.errors.NotFound):
                        return
                    raise item
                for line in item:
                    yield line
        finally:
            pump.stop.set()
            if pump.response is not None:
                with contextlib.suppress(Exception):
                    docker.types.daemon.CancellableStream(iter(()), pump.response).close()

    def _logs_main(self, cid: str, params: dict[str, Any], timestamps: bool, pump: _LogPump,
                   loop: asyncio.AbstractEventLoop) -> None:
        def send(item: list[LogLine] | BaseException | None) -> bool:
            while not pump.slots.acquire(timeout=0.5):
                if pump.stop.is_set():
                    return False
            try:
                loop.call_soon_threadsafe(pump.queue.put_nowait, item)
            except RuntimeError:
                return False
            return True

        try:
            api = self._api
            # The SDK's logs() merges stdout and stderr; the raw endpoint keeps them apart.
            response = api._get(api._url("/containers/{0}/logs", cid), params=params,
                                stream=True, timeout=None)
            pump.response = response
            api._raise_for_status(response)
            for stream, payload in read_frames(response.raw.read):
                if pump.stop.is_set():
                    return
                if not send(frame_lines(stream, payload, timestamps)):
                    return
            send(None)
        except Exception as exc:
            if not pump.stop.is_set():
                send(exc)
        finally:
            if pump.response is not None:
                with contextlib.suppress(Exception):
                    pump.response.close()

    async def close(self) -> None:
        self._closed.set()
        stream = self._events_stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._api.close()


def remove_node_containers(nodes: Sequence[str], base_url: str | None = None, *,
                           parallelism: int = 8) -> tuple[int, list[str]]:
    """Force-remove every container labelled for one of ``nodes``, whatever its task:
    what ``swctl down`` does once the agents are gone (a driver removes one task's
    container; this clears whole nodes). Anonymous volumes go with the containers; named
    volumes are user data and stay. Blocking. Returns (how many were removed, one
    message per container that could not be)."""
    if not nodes:
        return 0, []
    api: Any = docker.APIClient(base_url=base_url or docker_url(), version=API_VERSION,
                                timeout=60)
    failed: list[str] = []

    def remove(cid: str) -> bool:
        try:
            api.remove_container(cid, force=True, v=True)
        except docker.errors.NotFound:
            return False  # gone meanwhile: fine
        except docker.errors.APIError as exc:
            failed.append(f"{cid[:12]}: {exc.explanation or exc}")
            return False
        return True

    try:
        ids: list[str] = []
        for node in nodes:
            found = api.containers(all=True, filters={"label": f"{LABEL_NODE}={node}"})
            ids += [c["Id"] for c in found]
        with ThreadPoolExecutor(parallelism) as pool:
            removed = sum(pool.map(remove, ids))
    finally:
        api.close()
    return removed, failed


def _explain(exc: docker.errors.APIError) -> str:
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)


def math_ceil(seconds: float) -> int:
    """Docker's stop timeout is whole seconds; never round a grace period down."""
    whole = int(seconds)
    return whole if whole == seconds else whole + 1


def docker_mount(mount: tpl.Mount) -> docker.types.Mount:
    """A checked template mount (see crds.template) as the docker SDK's Mount."""
    try:
        return docker.types.Mount(target=mount.target,
                                  source=None if mount.type == "tmpfs" else mount.source,
                                  type=mount.type, read_only=mount.read_only)
    except docker.errors.InvalidArgument as exc:
        raise TaskRejectedError(f"mount {mount.target}: {exc}") from exc
