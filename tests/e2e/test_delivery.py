"""Delivery outcomes: retries, bounces (DSN) and partial failures, against a real SMTP sink."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default as default_policy

import pytest

from tests.harness import Gateway, Sink, wait_for

pytestmark = pytest.mark.e2e


def _dsn_id(record: dict[str, object]) -> str:
    events = record["events"]
    assert isinstance(events, list)
    [queued] = [e for e in events if e["event"] == "dsn_queued"]
    return str(queued["detail"]).split()[-1]


def test_temporary_failure_is_retried_then_delivered(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    rcpt = f"retry-{token}@example.test"
    relay_sink.plan(rcpt, [451, 451])
    message_id = gateway.send("alice@outside.test", [rcpt], f"Retry me {token}")
    record = gateway.wait_status(message_id, "delivered", timeout=30)
    assert record["recipients"][0]["attempts"] == 3
    assert [e["event"] for e in record["events"]].count("deferred") == 2
    assert len(relay_sink.with_token(token)) == 1


def test_permanent_failure_sends_a_dsn_to_the_sender(
    gateway: Gateway, relay_sink: Sink, internet_sink: Sink, token: str
) -> None:
    rcpt, sender = f"nouser-{token}@example.test", f"sender-{token}@outside.test"
    relay_sink.plan(rcpt, [550])
    message_id = gateway.send(sender, [rcpt], f"Bounce me {token}", subject=f"S {token}")
    record = gateway.wait_status(message_id, "bounced")
    assert record["recipients"][0]["reply"].startswith("550 5.1.1")

    [dsn] = wait_for(
        lambda: [m for m in internet_sink.with_token(token) if m.rcpt_tos == [sender]],
        20,
        "the DSN",
    )
    assert dsn.mail_from in ("", "<>")  # the null sender, as aiosmtpd spells it
    report = email.message_from_bytes(dsn.data, policy=default_policy)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied"
    parts = list(report.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks: list[Message] = parts[1].get_payload()  # type: ignore[assignment]
    recipient_block = blocks[1]
    assert recipient_block["Final-Recipient"] == f"rfc822; {rcpt}"
    assert recipient_block["Action"] == "failed"
    assert recipient_block["Status"] == "5.1.1"
    assert "Sink says: no such user" in recipient_block["Diagnostic-Code"]
    assert f"S {token}".encode() in parts[2].as_bytes()
    assert f"Bounce me {token}".encode() not in dsn.data  # headers only, not the body

    dsn_record = gateway.wait_status(_dsn_id(record), "delivered")
    assert dsn_record["bounce_of"] == message_id
    assert dsn_record["mail_from"] == ""


def test_a_bounce_never_bounces(
    gateway: Gateway, relay_sink: Sink, internet_sink: Sink, token: str
) -> None:
    rcpt, sender = f"nouser-{token}@example.test", f"gone-{token}@outside.test"
    relay_sink.plan(rcpt, [550])
    internet_sink.plan(sender, [550])  # the DSN itself is refused
    message_id = gateway.send(sender, [rcpt], f"Double bounce {token}")
    record = gateway.wait_status(message_id, "bounced")
    dsn_record = gateway.wait_status(_dsn_id(record), "bounced")
    assert "dsn_queued" not in [e["event"] for e in dsn_record["events"]]

    # Mail from the null sender that bounces yields no DSN either.
    rcpt2 = f"nouser2-{token}@example.test"
    relay_sink.plan(rcpt2, [550])
    null_id = gateway.send("", [rcpt2], f"From the null sender {token}")
    null_record = gateway.wait_status(null_id, "bounced")
    assert "dsn_queued" not in [e["event"] for e in null_record["events"]]
    assert internet_sink.with_token(token) == []


def test_partial_failure_splits_the_recipients(
    gateway: Gateway, relay_sink: Sink, internet_sink: Sink, token: str
) -> None:
    ok, gone, later = (f"{name}-{token}@example.test" for name in ("ok", "gone", "later"))
    relay_sink.plan(gone, [550])
    relay_sink.plan(later, [451])
    sender = f"sender-{token}@outside.test"
    message_id = gateway.send(sender, [ok, gone, later], f"Split {token}")
    record = gateway.wait_status(message_id, "partially_delivered", timeout=30)
    by_address = {r["address"]: r["status"] for r in record["recipients"]}
    assert by_address == {ok: "delivered", gone: "bounced", later: "delivered"}
    arrived = relay_sink.with_token(token)
    assert sorted(r for m in arrived for r in m.rcpt_tos) == sorted([ok, later])
    [dsn] = wait_for(
        lambda: [m for m in internet_sink.with_token(token) if m.rcpt_tos == [sender]],
        20,
        "the DSN",
    )
    report = email.message_from_bytes(dsn.data, policy=default_policy)
    blocks: list[Message] = list(report.iter_parts())[1].get_payload()  # type: ignore[assignment]
    assert [block["Final-Recipient"] for block in blocks[1:]] == [f"rfc822; {gone}"]
