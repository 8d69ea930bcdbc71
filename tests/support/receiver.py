"""A webhook receiver on loopback: a real HTTP server that checks Moat's signature the way the
README tells receivers to, records what it got, and fails on purpose when a test plans it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness import free_port

TOLERANCE = 300  # seconds between the signature's time and now, as Stripe's libraries allow


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """The receiver's side of ``Moat-Signature: t=<unix time>,v1=<hex>`` (the README's)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > TOLERANCE:
        return False
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    def __init__(self) -> None:
        self.secret = ""
        self.deliveries: list[Delivery] = []
        self.plan: list[int] = []  # statuses to answer, in turn; then 200
        self.always: int | None = None  # answer this every time
        self.delay = 0.0  # seconds before answering: a slow receiver keeps POSTs in flight
        self.lock = threading.Lock()
        self.port = free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    verified = verify(receiver.secret, self.headers.get("Moat-Signature", ""), body)
                    status = receiver.always or (receiver.plan.pop(0) if receiver.plan else 200)
                    if not verified:
                        status = 400
                    receiver.deliveries.append(
                        Delivery(dict(self.headers.items()), body, verified, status)
                    )
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"receiver says no")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def got(self, message_id: str, kind: str | None = None) -> list[Delivery]:
        with self.lock:
            return [
                d
                for d in self.deliveries
                if d.payload["data"]["message_id"] == message_id
                and (kind is None or d.payload["type"] == kind)
            ]
