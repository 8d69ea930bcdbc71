"""Bad input ends honestly: raw bytes over a socket that a polite client would never send, and
what becomes of them — refused in the dialogue with a precise code, or judged and stored, never
a message that one parser reads one way and the next another, never a crash."""

from __future__ import annotations

import email
from collections.abc import Callable
from email.policy import compat32
from pathlib import Path

import pytest

from moat.spool import DirectoryStore
from tests.harness import Gateway, Sink, wait_for
from tests.support.mime import nested_multipart, nested_rfc822
from tests.support.raw_smtp import RawSMTP, queue_id

pytestmark = pytest.mark.e2e

SEPARATORS = pytest.mark.parametrize("separator", [b"\r", b"\n"], ids=["bare-CR", "bare-LF"])


def message(token: str, header: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    """A plain message from alice@outside.test to bob@example.test; ``header`` goes in its
    header section as given."""
    return (
        b"From: alice@outside.test\r\nTo: bob@example.test\r\n"
        + header
        + b"Message-ID: <"
        + token.encode()
        + b"@outside.test>\r\nDate: Sun, 29 Nov 2026 04:00:00 +0000\r\n\r\n"
        + body
    )


# --- (a) bare CR and bare LF ------------------------------------------------------------------


@SEPARATORS
def test_forged_headers_behind_a_bare_line_break_do_not_reach_the_relay(
    gateway: Gateway, relay_sink: Sink, token: str, separator: bytes
) -> None:
    # One header line to ingress's old reading, four to every parser that takes a bare CR or
    # LF for a line break: the scanner's, and the relay client's, which rewrites them to CRLF.
    hidden = separator.join(
        [
            b"Subject: " + token.encode(),
            b"X-Moat-Verdict: clean",
            b"X-Moat-Score: -100",
            b"Authentication-Results: moat.test; dkim=pass header.d=bank.test",
        ]
    )
    # Delivery waits, so that the stored copy (delivered mail's is removed) can be read.
    gateway.stop("delivery")
    try:
        with RawSMTP(gateway.smtp_port) as client:
            message_id = queue_id(
                client.transaction(
                    b"alice@outside.test",
                    [b"bob@example.test"],
                    message(token, hidden + b"\r\n"),
                )
            )
        gateway.wait_status(message_id, "delivering")
        # The stored copy, which the scanners read, has the lines the relay gets: CRLF only.
        stored = DirectoryStore(Path(gateway.config["spool_dir"])).path(message_id).read_bytes()
        assert stored.count(b"\r") == stored.count(b"\n") == stored.count(b"\r\n")
        assert b"X-Moat-" not in stored and b"bank.test" not in stored
    finally:
        gateway.start("delivery")
    record = gateway.wait_status(message_id, "delivered")

    [arrived] = wait_for(lambda: relay_sink.with_token(token), 10, "the mail at the sink")
    relayed = email.message_from_bytes(arrived.data, policy=compat32)
    assert relayed.get_all("X-Moat-Verdict") == [record["verdict"]["verdict"]]  # ours alone
    assert len(relayed.get_all("X-Moat-Score", [])) == 1
    assert b"-100" not in arrived.data
    assert b"bank.test" not in arrived.data
    assert relayed["Subject"] == token  # the hidden lines were lines, and are gone


@SEPARATORS
def test_received_lines_behind_bare_line_breaks_count_as_hops(
    gateway: Gateway, token: str, separator: bytes
) -> None:
    hops = separator.join(b"Received: h%d" % hop for hop in range(51)) + b"\r\n"
    with RawSMTP(gateway.smtp_port) as client:
        code, text = client.transaction(
            b"alice@outside.test", [b"bob@example.test"], message(token, hops)
        )
    assert (code, text[:6]) == (554, b"5.4.0 "), (code, text)


# --- (b) non-ASCII addresses without SMTPUTF8 -------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "jörg@outside.test".encode(),
        "alice@öutside.test".encode(),  # a U-label domain is UTF-8 too
        b"j\xf6rg@outside.test",  # Latin-1, not even UTF-8
    ],
    ids=["utf8-local", "utf8-domain", "latin1"],
)
def test_non_ascii_sender_without_smtputf8_is_refused_at_mail(
    gateway: Gateway, sender: bytes
) -> None:
    with RawSMTP(gateway.smtp_port) as client:
        assert client.command(b"EHLO client.test")[0] == 250
        code, text = client.command(b"MAIL FROM:<" + sender + b">")
        assert (code, text[:6]) == (553, b"5.6.7 "), (code, text)
        # Refused, not broken: the session goes on.
        assert client.command(b"MAIL FROM:<alice@outside.test>")[0] == 250


@pytest.mark.parametrize(
    "recipient",
    ["bøb@example.test".encode(), "bob@exämple.test".encode(), b"b\xf8b@example.test"],
    ids=["utf8-local", "utf8-domain", "latin1"],
)
def test_non_ascii_recipient_without_smtputf8_is_refused_at_rcpt(
    gateway: Gateway, recipient: bytes
) -> None:
    with RawSMTP(gateway.smtp_port) as client:
        assert client.command(b"EHLO client.test")[0] == 250
        assert client.command(b"MAIL FROM:<alice@outside.test>")[0] == 250
        code, text = client.command(b"RCPT TO:<" + recipient + b">")
        assert (code, text[:6]) == (553, b"5.6.7 "), (code, text)
        assert client.command(b"RCPT TO:<bob@example.test>")[0] == 250


def test_an_address_that_is_not_utf8_is_bad_syntax_even_with_smtputf8(gateway: Gateway) -> None:
    # Accepted, it failed at DATA with 451 (it cannot be stored or relayed): a retry forever.
    with RawSMTP(gateway.smtp_port) as client:
        assert client.command(b"EHLO client.test")[0] == 250
        code, text = client.command(b"MAIL FROM:<j\xf6rg@outside.test> SMTPUTF8")
        assert (code, text[:6]) == (501, b"5.1.7 "), (code, text)
        assert client.command(b"MAIL FROM:<alice@outside.test> SMTPUTF8")[0] == 250
        code, text = client.command(b"RCPT TO:<b\xf8b@example.test>")
        assert (code, text[:6]) == (501, b"5.1.3 "), (code, text)


def test_non_ascii_addresses_with_smtputf8_are_delivered(
    gateway: Gateway, relay_sink: Sink, token: str
) -> None:
    sender, recipient = "jörg@outside.test", "bøb@example.test"
    content = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: grüße {token}\r\n"
        f"Message-ID: <{token}@outside.test>\r\nDate: Sun, 29 Nov 2026 04:00:00 +0000\r\n"
        "\r\nHallo.\r\n"
    ).encode()
    with RawSMTP(gateway.smtp_port) as client:
        assert client.command(b"EHLO client.test")[0] == 250
        code, text = client.command(f"MAIL FROM:<{sender}> SMTPUTF8".encode())
        assert code == 250, (code, text)
        code, text = client.command(f"RCPT TO:<{recipient}>".encode())
        assert code == 250, (code, text)
        message_id = queue_id(client.data(content))
    gateway.wait_status(message_id, "delivered")
    [arrived] = wait_for(lambda: relay_sink.with_token(token), 10, "the mail at the sink")
    assert (arrived.mail_from, arrived.rcpt_tos) == (sender, [recipient])
    assert "grüße".encode() in arrived.data


# --- (c) MIME nested too deep -----------------------------------------------------------------


@pytest.mark.parametrize(
    "nested", [nested_multipart, nested_rfc822], ids=["multipart", "message-rfc822"]
)
def test_mime_nested_1200_deep_is_quarantined_by_policy(
    gateway: Gateway, token: str, nested: Callable[[int], bytes]
) -> None:
    # Python's email parser descends one frame per level: 1,200 levels raised RecursionError
    # in the scanner, and the message ended failed, dead-lettered.
    content = message(token, b"Subject: " + token.encode() + b"\r\nMIME-Version: 1.0\r\n")
    content = content.removesuffix(b"\r\nHello.\r\n") + nested(1200)
    with RawSMTP(gateway.smtp_port) as client:
        message_id = queue_id(
            client.transaction(b"alice@outside.test", [b"bob@example.test"], content)
        )
    record = gateway.wait_status(
        message_id, {"quarantined", "failed", "delivering", "delivered"}, timeout=30
    )
    assert record["status"] == "quarantined", (record["status"], record.get("reason"))
    verdict = record["verdict"]
    assert verdict["verdict"] == "policy"
    [unscannable] = [f for f in verdict["findings"] if f["symbol"] == "MIME_UNSCANNABLE"]
    assert unscannable["detail"] == "MIME nesting deeper than 20"
    failures = [f["symbol"] for f in verdict["findings"] if f["category"] == "failure"]
    assert failures == []


# --- SMTP smuggling: an end of data that is not one ---------------------------------------------


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n", b"\r\n.\r"],
    ids=["LF.CRLF", "CR.CRLF", "LF.LF", "CRLF.LF", "CRLF.CR"],
)
def test_a_smuggled_end_of_data_ends_nothing(
    gateway: Gateway, relay_sink: Sink, internet_sink: Sink, token: str, fake_end: bytes
) -> None:
    """SMTP smuggling (CVE-2023-51764 and kin): a dot between line breaks other than CRLF, then
    a second transaction in the same DATA. Ingress must see one message (the smuggled MAIL,
    RCPT and DATA are its text), and the relay must get it dot-stuffed, so that the next hop
    cannot be made to see a second message either."""
    smuggled = (
        b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\n"
        b"From: ceo@example.test\r\nSubject: smuggled " + token.encode() + b"\r\n\r\nPay.\r\n"
    )
    content = message(token, b"Subject: carrier " + token.encode() + b"\r\n", b"Hello.")
    with RawSMTP(gateway.smtp_port) as client:
        reply = client.transaction(
            b"alice@outside.test", [b"bob@example.test"], content + fake_end + smuggled
        )
        message_id = queue_id(reply)
        # One 250 for one message: the session is at the start of a new transaction, and
        # nothing of the smuggled text was taken as a command.
        assert client.command(b"RSET")[0] == 250
        assert client.command(b"QUIT")[0] == 221
    record = gateway.wait_status(message_id, {"delivered", "quarantined"})
    assert record["status"] == "delivered", record
    [arrived] = wait_for(lambda: relay_sink.with_token(token), 10, "the mail at the sink")
    # The one relayed message carries the smuggled lines as its text (with a dot line before
    # them where the fake end was a whole line to ingress: the relay stuffed it, the sink
    # unstuffed it; unstuffed on the way out, it would have ended the data at the sink and
    # the rest would have been a second transaction there).
    assert b"\r\nMAIL FROM:<ceo@example.test>\r\n" in arrived.data
    if fake_end in (b"\n.\r\n", b"\r.\r\n", b"\n.\n"):
        assert b"\r\n.\r\nMAIL FROM:<ceo@example.test>\r\n" in arrived.data
    assert b"Subject: smuggled " + token.encode() in arrived.data
    assert len(relay_sink.with_token(token)) == 1
    assert not internet_sink.with_token(token), "a second message went out"
