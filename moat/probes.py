"""The small HTTP port of ingress, scanner and delivery (``<service>.metrics_port``, on
``metrics_host``): ``GET /healthz`` (the process answers), ``GET /readyz`` (it can do its
work: 200, else 503 naming what is missing) and ``GET /metrics`` (Prometheus text).

A plain asyncio server, one request per connection: orchestrators and scrapers ask a few times
a minute, and it needs no web framework in services that have none. It serves no message
data, only counts, so it needs no token; it binds loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from moat import metrics
from moat.broker import Broker
from moat.settings import Settings

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0  # seconds for a client to send its request line and headers
MAX_HEADER = 8192

# What is missing for the process to be ready (empty: ready).
Readiness = Callable[[], list[str]]


class ProbeServer:
    def __init__(
        self, service: str, registry: CollectorRegistry, readiness: Readiness | None = None
    ) -> None:
        self.service = service
        self.registry = registry
        # Until the service says how to tell (once its parts are built): not ready.
        self.readiness: Readiness = readiness or (lambda: ["starting"])
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> bool:
        """Listen on ``host:port`` (port 0: do nothing). A port that cannot be bound is logged
        and the service runs on without it: mail matters more than its metrics (a probe that
        does not answer tells the orchestrator anyway)."""
        if not port:
            return False
        try:
            self.server = await asyncio.start_server(self._serve, host, port)
        except OSError as exc:
            log.error(
                "%s: cannot serve metrics and probes on %s:%d: %s", self.service, host, port, exc
            )
            return False
        log.info("%s: /healthz, /readyz and /metrics on http://%s:%d", self.service, host, port)
        return True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        try:
            if len(head) > MAX_HEADER:
                status, body, kind = 431, b"request header too large\n", "text/plain"
            else:
                status, body, kind = self._answer(head.split(b"\r\n", 1)[0])
            reason = {
                200: "OK",
                404: "Not Found",
                405: "Method Not Allowed",
                431: "Too Large",
                503: "Service Unavailable",
            }.get(status, "")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
                + body
            )
            await writer.drain()
        except Exception as exc:  # a client gone mid-answer, or a collector that failed
            log.info("%s: probe request failed: %s: %s", self.service, type(exc).__name__, exc)
        finally:
            writer.close()

    def _answer(self, request_line: bytes) -> tuple[int, bytes, str]:
        parts = request_line.split()
        if len(parts) != 3:
            return 404, b"not found\n", "text/plain"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return 405, b"GET only\n", "text/plain"
        if target == b"/healthz":
            return 200, b'{"status": "ok"}\n', "application/json"
        if target == b"/readyz":
            missing = self.readiness()
            if missing:
                detail = ", ".join(missing)
                return (
                    503,
                    f'{{"status": "not ready", "missing": "{detail}"}}\n'.encode(),
                    ("application/json"),
                )
            return 200, b'{"status": "ready"}\n', "application/json"
        if target == b"/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        return 404, b"not found\n", "text/plain"


async def serve(service: str, settings: Settings, port: int) -> ProbeServer:
    """Start a service's probe server before it connects anywhere, so that ``/healthz``
    answers (and ``/readyz`` says "starting") while it waits for the broker; set its
    ``readiness`` once the service is built."""
    server = ProbeServer(service, metrics.get().registry)
    await server.start(settings.metrics_host, port)
    return server


def consumer_ready(broker: Broker, queue: str) -> Readiness:
    """Ready: the broker connection is up and our consumer is registered on ``queue``."""

    def missing() -> list[str]:
        if not broker.connected:
            return ["broker connection"]
        if not broker.consuming(queue):
            return [f"consumer on {queue}"]
        return []

    return missing
