"""ClamAV end to end: the real services with a real clamd (tests/support/clamd.py, the test
signatures of tests/fixtures/clamav/). A virus is quarantined; with clamd down, mail waits and
is retried, never delivered unscanned, and goes on once clamd is back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Any

import pytest

from tests.harness import Gateway, Sink, wait_for
from tests.support.clamd import MARKER, MARKER_SIGNATURE, ClamdServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def clamd() -> Iterator[ClamdServer]:
    with ClamdServer() as server:
        yield server


def clamav(clamd: ClamdServer, **more: Any) -> dict[str, Any]:
    return {"clamav": {"enabled": True, "socket": str(clamd.socket), "scan_timeout": 5, **more}}


def send_with_attachment(gateway: Gateway, token: str, payload: bytes, filename: str) -> str:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"], message["To"], message["Subject"] = (
        "alice@outside.test",
        "bob@example.test",
        f"documents {token}",
    )
    message["Date"], message["Message-ID"] = formatdate(), make_msgid(domain="outside.test")
    message.set_content(f"See attached. {token}")
    message.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename=filename
    )
    with gateway.smtp() as client:
        client.sendmail("alice@outside.test", ["bob@example.test"], message.as_bytes())
        return client.last_queue_id


def symbols(record: dict[str, Any]) -> set[str]:
    return {finding["symbol"] for finding in record["verdict"]["findings"]}


def test_custom_signature_in_an_attachment_is_quarantined(
    make_gateway: Callable[..., Gateway], clamd: ClamdServer, relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", scanner=clamav(clamd))
    virus = send_with_attachment(gateway, token, b"data " + MARKER + b" data", "tool.bin")
    clean = send_with_attachment(gateway, token, b"just some bytes", "notes.bin")

    record = gateway.wait_status(virus, "quarantined")
    assert record["verdict"]["verdict"] == "virus"
    (found,) = [f for f in record["verdict"]["findings"] if f["symbol"] == "CLAMAV_VIRUS"]
    assert found["category"] == "virus"
    assert found["detail"].removesuffix(".UNOFFICIAL") == MARKER_SIGNATURE
    assert "EICAR_TEST_FILE" not in symbols(record)  # it was ClamAV that found it

    delivered = gateway.wait_status(clean, {"delivered", "quarantined", "failed"})
    assert "CLAMAV_NONE" in symbols(delivered), delivered["verdict"]
    assert delivered["status"] == "delivered", delivered["verdict"]
    assert len(relay_sink.with_token(token)) == 1  # the clean one only
    assert "ClamAV disabled" not in gateway.log("scanner")


def test_clamd_down_holds_mail_until_it_is_back(
    make_gateway: Callable[..., Gateway], clamd: ClamdServer, relay_sink: Sink, token: str
) -> None:
    # Enough deliveries allowed for the outage (the broker's pause between them grows).
    gateway = make_gateway("sqlite", scanner=clamav(clamd), broker={"delivery_limit": 20})
    clamd.stop()
    message_id = send_with_attachment(gateway, token, b"just some bytes", "notes.bin")

    # Scanned, failed, retried: at least twice, and all the while not delivered.
    wait_for(
        lambda: gateway.log("scanner").count(f"check clamav failed on {message_id}") >= 2,
        30,
        "the scanner to fail on the message twice",
    )
    record = gateway.message(message_id)
    assert record["status"] == "queued" and record["verdict"] is None
    assert relay_sink.with_token(token) == []

    clamd.start()
    record = gateway.wait_status(message_id, "delivered", timeout=60)
    assert "CLAMAV_NONE" in symbols(record)
    assert len(relay_sink.with_token(token)) == 1


def test_clamd_down_past_the_delivery_limit_fails_visibly_never_delivered(
    make_gateway: Callable[..., Gateway], clamd: ClamdServer, relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite", scanner=clamav(clamd), broker={"delivery_limit": 2})
    clamd.stop()
    message_id = send_with_attachment(gateway, token, b"just some bytes", "notes.bin")
    record = gateway.wait_status(message_id, "failed")
    assert record["verdict"] is None
    assert relay_sink.with_token(token) == []


def test_disabled_by_default_warns_and_reports_nothing(
    make_gateway: Callable[..., Gateway], relay_sink: Sink, token: str
) -> None:
    gateway = make_gateway("sqlite")
    message_id = send_with_attachment(gateway, token, b"just some bytes", "notes.bin")
    record = gateway.wait_status(message_id, {"delivered", "quarantined"})
    assert not any(symbol.startswith("CLAMAV") for symbol in symbols(record))
    assert "ClamAV disabled: mail is not virus-scanned" in gateway.log("scanner")
