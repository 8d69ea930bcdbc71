"""The API's operational contract, as ASGI middleware around every route: request bodies are
bounded, and every request is counted and timed for ``/metrics``.

Both are plain ASGI (not ``BaseHTTPMiddleware``): a body is refused as it streams in, never
read into memory first, and nothing buffers a response.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.problems import problem


class BodyLimit:
    """A body larger than ``limit`` bytes answers 413: at once when its ``Content-Length``
    says so, else as soon as what arrived passes the limit (chunked bodies)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            too_big = problem(413, f"the request body is larger than {self.limit} bytes")
            too_big.headers["Connection"] = "close"  # the rest of the body is not read
            await too_big(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the route's body parsing: FastAPI passes an HTTPException
                    # on, and the app's handler answers it as a problem.
                    raise HTTPException(413, f"the request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, bounded, send)


# A NUL as JSON writes it, not preceded by an escaping backslash (``\\u0000`` is text).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)
NUL_DETAIL = "the request holds a NUL character, which no field of this API takes"


class RefuseNul:
    """A NUL character anywhere in a request (path, query, body) answers 422. No field takes
    one, and PostgreSQL cannot store one in text: unchecked, it reached the database and came
    back as a database error (503), where SQLite kept it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
        if b"\x00" in target or b"%00" in target:
            await problem(422, NUL_DETAIL)(scope, receive, send)
            return
        tail = b""

        async def checked() -> Message:
            nonlocal tail
            message = await receive()
            if message["type"] == "http.request":
                body = tail + message.get("body", b"")
                if b"\x00" in body or _JSON_NUL.search(body):
                    raise HTTPException(422, NUL_DETAIL)
                tail = body[-16:]
            return message

        await self.app(scope, checked, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class ApiMetrics:
    """What ``/metrics`` shows, in a registry of this app's own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "moat_api_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "moat_api_request_duration_seconds",
            "Time to answer a request, by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.messages = Gauge(
            "moat_messages",
            "Messages in the database by status (cached for api.metrics_cache_seconds)",
            ["status"],
            registry=self.registry,
        )
        self.messages_read_at = float("-inf")

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def set_messages(self, counts: dict[str, int], statuses: list[str]) -> None:
        for status in statuses:
            self.messages.labels(status).set(counts.get(status, 0))
        self.messages_read_at = time.monotonic()


class CountRequests:
    """Counts and times every request by its route *template* (``/v1/messages/{message_id}``,
    never the id: a label per message would grow without bound); a path no route matched is
    ``unmatched``."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets should the app raise before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - started)
