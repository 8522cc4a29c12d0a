"""Prometheus metrics of the operator framework, and the HTTP endpoint that serves them.

All runtime metrics are defined here, once per process, so every controller, queue and
informer labels the same families (``controller``, ``kind``) and dashboards need not know
which process runs what. Hot paths (informer ingest) use pre-labelled children so the
per-event cost is one locked integer add.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import prometheus_client

from shoal.pki.bundle import Bundle

RECONCILE_TOTAL = prometheus_client.Counter(
    "shoal_reconcile_total", "Reconcile calls by outcome (success, requeue, error, conflict, "
    "fenced).", ["controller", "result"])
RECONCILE_ERRORS = prometheus_client.Counter(
    "shoal_reconcile_errors_total", "Reconcile calls that raised.", ["controller"])
RECONCILE_DURATION = prometheus_client.Histogram(
    "shoal_reconcile_duration_seconds", "Time spent in one reconcile call.", ["controller"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
QUEUE_DEPTH = prometheus_client.Gauge(
    "shoal_workqueue_depth", "Keys waiting for a reconcile worker.", ["controller"])
QUEUE_RETRIES = prometheus_client.Counter(
    "shoal_workqueue_retries_total", "Keys re-queued with backoff after a failure.",
    ["controller"])
INFORMER_EVENTS = prometheus_client.Counter(
    "shoal_informer_events_total", "Watch events applied to an informer cache "
    "(type added, modified, deleted, reset).", ["kind", "type"])
INFORMER_OBJECTS = prometheus_client.Gauge(
    "shoal_informer_objects", "Objects in an informer cache.", ["kind"])
LEADER = prometheus_client.Gauge(
    "shoal_leader", "1 while this process holds the controller's leader lease.",
    ["controller", "identity"])


@dataclasses.dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``port`` is the bound port (useful with port 0)."""

    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(port: int, addr: str = "0.0.0.0",
                         tls: Bundle | None = None) -> MetricsServer:
    """Serve the process's metrics over HTTP on ``addr:port`` from a daemon thread.

    A thread rather than an asyncio server: prometheus_client's exporter is synchronous
    and scrapes must keep answering even while the event loop is busy ingesting.
    With ``tls`` (a process of a TLS cluster) it serves https only, presenting the
    bundle's certificate and demanding a client certificate from the cluster CA, as every
    endpoint of such a cluster does.
    """
    if tls is None:
        server, thread = prometheus_client.start_http_server(port, addr=addr)
    else:
        server, thread = prometheus_client.start_http_server(
            port, addr=addr, certfile=str(tls.cert), keyfile=str(tls.key),
            client_cafile=str(tls.ca), client_auth_required=True)
    return MetricsServer(int(server.server_port), server, thread)
