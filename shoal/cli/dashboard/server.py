"""The dashboard's HTTP server (aiohttp): the page, its event stream, actions and logs.

Routes:

* ``GET /`` and ``GET /static/{app.js,app.css}``: the page, from package data.
* ``GET /events``: server-sent events — a ``snapshot`` of every record, then ``delta``
  batches from the hub (``hub.py``), and a comment every 15 s so a dead peer is noticed.
  The browser's EventSource reconnects by itself and gets a fresh snapshot.
* ``POST /api/actions``: one action as JSON, run as swctl would run it (``actions.py``).
* ``GET /api/logs?namespace=NS&task=NAME``: a task's log lines, followed, as
  server-sent events, read from its node's agent exactly as ``swctl logs`` reads them
  (``logs.fetch``, over mTLS with swctl's certificate when the endpoint is https).

Every request passes ``access.Access`` first (loopback, or the token). The server owns
one store connection and the informers on it; actions open their own connection, as the
verbs they run do.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import sys
import webbrowser
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from shoal.cli import common, console, errors, logs
from shoal.cli.dashboard import access, actions, customkinds, hub, views
from shoal.crds import kinds
from shoal.runtime import informer as rt_informer
from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.cli.dashboard.server")

STATIC: Final = {"app.js": "text/javascript", "app.css": "text/css"}
HEARTBEAT: Final = 15.0
SYNC_TIMEOUT: Final = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str) -> bytes:
    return (importlib.resources.files(__package__) / "static" / name).read_bytes()


class Dashboard:
    """The application: routes over a hub, with the options actions run under."""

    def __init__(self, the_hub: hub.Hub, opts: common.GlobalOptions,
                 rule: access.Access) -> None:
        self.hub = the_hub
        self.opts = opts
        self.access = rule
        self.informers = the_hub.informers

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/events", self.events)
        app.router.add_post("/api/actions", self.action)
        app.router.add_get("/api/logs", self.logs)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self.access.refusal(request.host, request.query, request.headers,
                                      request.cookies)
        if refusal is not None:
            return web.Response(status=403 if self.access.token is None else 401,
                                text=refusal + "\n")
        return await handler(request)

    async def index(self, request: web.Request) -> web.Response:
        response = web.Response(body=_static("index.html"), content_type="text/html",
                                headers={"Cache-Control": "no-store"})
        if self.access.token is not None:
            response.set_cookie(access.COOKIE, self.access.token, httponly=True,
                                samesite="Strict", path="/")
        return response

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound(text=f"no such file: {name}\n")
        return web.Response(body=_static(name), content_type=STATIC[name],
                            headers={"Cache-Control": "no-store"})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        return response

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = await self._sse(request)
        with self.hub.subscribe() as sub:
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(sub.queue.get(), HEARTBEAT)
                    except TimeoutError:
                        message = b": ping\n\n"
                    if message is None:
                        break
                    await response.write(message)
            except (ConnectionResetError, ConnectionError):
                pass  # the browser went away
        return response

    async def action(self, request: web.Request) -> web.Response:
        refusal = self.access.action_refusal(request.headers)
        if refusal is not None:
            return web.json_response({"ok": False, "errors": [f"error: {refusal}"]},
                                     status=403)
        try:
            body = await request.json(loads=orjson.loads)
            if not isinstance(body, dict):
                raise actions.ActionError("the action request must be a JSON object")
            argv = actions.argv_for(body)
        except (ValueError, orjson.JSONDecodeError) as exc:
            return web.json_response({"ok": False, "errors": [f"error: {exc}"]}, status=400)
        outcome = await actions.run(argv, self.opts)
        log.info("dashboard action", command=outcome.command, ok=outcome.ok)
        return web.json_response(outcome.to_json(), dumps=lambda v: orjson.dumps(v).decode())

    async def logs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.query.get("namespace") or "default"
        name = request.query.get("task") or ""
        task = self.informers[views.TASKS].get(name, namespace)
        response = await self._sse(request)

        async def send(event: str, payload: dict[str, Any]) -> None:
            await response.write(hub.encode(event, payload))
        try:
            if task is None:
                await send("failed", {"error": f'error: task "{name}" not found in '
                                               f"namespace {namespace}"})
                return response
            node_name = str(task.spec.get("nodeName") or "")
            node = self.informers[views.NODES].get(node_name) if node_name else None
            endpoint = node.status.get("logsEndpoint") if node is not None else None
            if not endpoint:
                await send("failed", {"error": f"error: task {name} has no node serving its "
                                               "logs (not scheduled yet, or the node's agent "
                                               "publishes no log endpoint)"})
                return response
            try:
                async for line in logs.fetch(str(endpoint), node_name, task.metadata.uid,
                                             follow=True, tail=200, tls=self.opts.tls):
                    await send("line", {"t": line.timestamp, "stream": line.stream,
                                        "text": line.line.decode(errors="replace")})
            except logs.LogsError as exc:
                await send("failed", {"error": f"error: {exc}"})
        except (ConnectionResetError, ConnectionError):
            pass
        return response


async def _informers(store: Any, etcd: str, factory: rt_informer.SharedInformerFactory,
                     registry: kinds.Registry) -> dict[str, rt_informer.Informer]:
    found = {kind: factory.informer(registry.lookup(kind)) for kind in views.KINDS}
    factory.informer(registry.lookup(kinds.CRD_KIND))
    factory.start()
    try:
        await factory.wait_for_sync(SYNC_TIMEOUT)
    except TimeoutError:
        await factory.stop()
        raise errors.CliError(f"the cluster's objects could not be listed within "
                              f"{SYNC_TIMEOUT:g}s; is etcd ({etcd}) answering?") from None
    return found


def url_of(address: str, port: int, token: str | None) -> str:
    host = f"[{address}]" if ":" in address else address
    if address in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # what to type on this machine; any of its addresses works
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


async def serve(opts: common.GlobalOptions, address: str, port: int, open_page: bool,
                ready: Callable[[str], None] | None = None) -> int:
    """Serve until cancelled (Ctrl-C)."""
    rule = access.Access(None if access.is_loopback(address) else access.new_token())
    async with common.open_store(opts) as store:
        registry: kinds.Registry = await common.registry_of(store)
        factory = rt_informer.SharedInformerFactory(store)
        informers = await _informers(store, opts.etcd, factory, registry)
        the_hub = hub.Hub(informers)
        custom = customkinds.CustomKinds(factory, the_hub, registry)
        flusher = asyncio.create_task(the_hub.run(), name="dashboard-hub")
        runner = web.AppRunner(Dashboard(the_hub, opts, rule).app(), access_log=None,
                               handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, address, port)
            try:
                await site.start()
            except OSError as exc:
                raise errors.CliError(f"cannot listen on {address}:{port}: "
                                      f"{exc.strerror or exc}; pick another --port (0 picks "
                                      "a free one) or --address") from None
            bound = runner.addresses[0][1] if runner.addresses else port
            url = url_of(address, bound, rule.token)
            console.out(f"Dashboard: {url}")
            if rule.token:
                print("anyone who can reach this address needs the token in that URL; "
                      "press Ctrl-C to stop", file=sys.stderr)
            if ready is not None:
                ready(url)
            if open_page:
                webbrowser.open(url)
            await asyncio.Event().wait()  # until cancelled
        finally:
            custom.close()
            the_hub.close()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await runner.cleanup()
            await factory.stop()
    return 0
