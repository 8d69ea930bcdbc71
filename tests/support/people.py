"""Helpers for the tests of the quarantine's people parts: tokens, held mail, a cookie-keeping
client for the web page, and the digests that reach the relay sink."""

from __future__ import annotations

import email
import html
import re
from email.message import Message
from typing import Any

import httpx

from tests.harness import Gateway, Sink, wait_for

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def issue(gateway: Gateway, **body: Any) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.post("/v1/tokens", json={"name": "test", **body})
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    return issued


def hold_spam(
    gateway: Gateway, rcpts: list[str], subject: str, body: str = "", sender: str = ""
) -> str:
    """Send GTUBE spam to ``rcpts``; return its id once it is quarantined."""
    message_id = gateway.send(
        sender or "spammer@outside.test", rcpts, f"{body}\n{GTUBE}\n", subject=subject
    )
    gateway.wait_status(message_id, "quarantined")
    return message_id


class WebClient:
    """A browser's part, over httpx: cookies, and the CSRF field of the last page."""

    def __init__(self, gateway: Gateway) -> None:
        self.http = gateway.http()
        del self.http.headers["Authorization"]
        self.csrf = ""

    def __enter__(self) -> WebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str) -> httpx.Response:
        response = self.http.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, fields: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(path, data={"csrf": self.csrf, **(fields or {})})

    def sign_in(self, secret: str) -> httpx.Response:
        self.get("/ui/signin")
        response = self.post("/ui/signin", {"token": secret})
        assert response.status_code == 303, response.text
        return response


def digests_to(sink: Sink, address: str) -> list[Message]:
    """The quarantine digests the sink received for ``address``."""
    found = []
    with sink.handler.lock:
        received = list(sink.handler.messages)
    for item in received:
        if [a.lower() for a in item.rcpt_tos] != [address.lower()]:
            continue
        message = email.message_from_bytes(item.data)
        if str(message["Subject"]).startswith("Quarantine:"):
            found.append(message)
    return found


def wait_digest(sink: Sink, address: str, count: int = 1) -> list[Message]:
    def enough() -> list[Message] | None:
        found = digests_to(sink, address)
        return found if len(found) >= count else None

    return wait_for(enough, 30, f"{count} digest(s) to {address}")


def text_of(message: Message, subtype: str = "plain") -> str:
    for part in message.walk():
        if part.get_content_type() == f"text/{subtype}":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError(f"no text/{subtype} part")


def links_in(digest: Message) -> dict[str, list[str]]:
    """The digest's one-click links, by what they do (paths under /ui/link/)."""
    text = text_of(digest)
    found: dict[str, list[str]] = {"release": [], "delete": [], "block": [], "signin": []}
    for line in text.splitlines():
        match = re.search(r"(https://\S+/ui/link/\S+)", line)
        if not match:
            continue
        kind = (
            "release"
            if "Release it" in line
            else "delete"
            if "Delete it" in line
            else "block"
            if "Block" in line
            else "signin"
        )
        found[kind].append(match.group(1))
    return found


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def page_text(response: httpx.Response) -> str:
    """The visible text of a page, roughly: tags dropped, entities undone."""
    return html.unescape(re.sub(r"<[^>]+>", " ", response.text))
