"""A message's whole journey: accepted, scanned, delivered or quarantined, visible in the API."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy

import pytest

from services.scanner.checks import EICAR, GTUBE
from tests.harness import Gateway, Sink, wait_for

pytestmark = pytest.mark.e2e


def test_clean_mail_arrives_once_with_our_headers(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    forged = {
        "X-Moat-Verdict": "clean",
        "X-Moat-Score": "-100",
        "Authentication-Results": "moat.test; dkim=pass header.d=bank.test",
    }
    message_id = gateway.send(
        "alice@outside.test", ["bob@example.test"], f"Hello {token}", extra_headers=forged
    )
    record = gateway.wait_status(message_id, "delivered")

    [arrived] = wait_for(lambda: relay_sink.with_token(token), 10, "the mail at the sink")
    assert arrived.rcpt_tos == ["bob@example.test"]
    assert arrived.mail_from == "alice@outside.test"
    assert arrived.data.startswith(b"X-Moat-Verdict: clean\r\nX-Moat-Score: ")
    # What a sender forged of ours is gone; only our own verdict fields remain.
    assert arrived.data.count(b"X-Moat-Verdict:") == 1
    assert b"X-Moat-Score: -100" not in arrived.data
    assert b"bank.test" not in arrived.data
    parsed = email.message_from_bytes(arrived.data, policy=default_policy)
    received = parsed["Received"]
    assert "from client.test ([127.0.0.1])" in received
    assert f"by moat.test (Moat) with ESMTP id {message_id}" in received
    assert "for <bob@example.test>" in received
    # Our sender authentication, per RFC 8601, under our authserv-id.
    assert "spf=pass smtp.mailfrom=outside.test" in " ".join(
        parsed["Authentication-Results"].split()
    )
    assert parsed["Authentication-Results"].startswith("moat.test;")

    assert record["verdict"]["verdict"] == "clean"
    symbols = {finding["symbol"] for finding in record["verdict"]["findings"]}
    assert {"EICAR_NONE", "GTUBE_NONE"} <= symbols  # misses are recorded too
    [recipient] = record["recipients"]
    assert recipient["status"] == "delivered"
    assert recipient["reply"].startswith("250 2.0.0")
    events = [event["event"] for event in record["events"]]
    assert events[0] == "received" and "scanned" in events and events[-1] == "delivered"


def test_eicar_in_an_attachment_is_quarantined(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"], message["To"], message["Subject"] = (
        "alice@outside.test",
        "bob@example.test",
        f"invoice {token}",
    )
    message.set_content(f"See attached. {token}")
    message.add_attachment(
        EICAR, maintype="application", subtype="octet-stream", filename="invoice.com"
    )  # base64 on the wire
    assert EICAR not in message.as_bytes()
    with gateway.smtp() as client:
        client.sendmail("alice@outside.test", ["bob@example.test"], message.as_bytes())
        message_id = client.last_queue_id

    record = gateway.wait_status(message_id, "quarantined")
    assert record["verdict"]["verdict"] == "virus"
    assert "EICAR_TEST_FILE" in {f["symbol"] for f in record["verdict"]["findings"]}
    # Held, not waiting for delivery; its raw copy is kept for review.
    assert record["recipients"][0]["status"] == "quarantined"
    assert list((gateway.workdir / "spool").rglob(f"{message_id}.eml"))
    assert relay_sink.with_token(token) == []


def test_gtube_is_quarantined_as_spam(gateway: Gateway, relay_sink: Sink, token: str) -> None:
    body = f"Buy now {token}\n{GTUBE.decode()}\n"
    message_id = gateway.send("alice@outside.test", ["bob@example.test"], body)
    record = gateway.wait_status(message_id, "quarantined")
    assert record["verdict"]["verdict"] == "spam"
    assert "GTUBE" in {f["symbol"] for f in record["verdict"]["findings"]}
    assert relay_sink.with_token(token) == []


def test_api_needs_the_admin_token_and_answers_problems(gateway: Gateway) -> None:
    with gateway.http() as http:
        assert http.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
        unauthorised = http.get("/v1/messages/01ABC", headers={"Authorization": "Bearer nope"})
        assert unauthorised.status_code == 401
        assert unauthorised.headers["content-type"] == "application/problem+json"
        assert unauthorised.json()["status"] == 401
        missing = http.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert http.get("/v1/messages/..%2Fetc").status_code == 404


def test_api_times_carry_their_offset(gateway: Gateway) -> None:
    message_id = gateway.send("alice@outside.test", ["bob@example.test"], "times")
    record = gateway.wait_status(message_id, "delivered")
    for value in (record["received_at"], record["updated_at"], record["events"][0]["at"]):
        assert value.endswith("Z") or value.endswith("+00:00"), value
