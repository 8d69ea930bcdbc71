"""services.delivery.dsn: every DSN is read back with the stdlib parser, the way a mail client
(or the e2e tests) would read it."""

from __future__ import annotations

import email.policy
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from services.delivery.dsn import FailedRecipient, build_dsn
from services.delivery.outcomes import enhanced_status

ARRIVAL = datetime(2025, 3, 1, 9, 30, 15, tzinfo=UTC)
ATTEMPT = datetime(2025, 3, 1, 9, 31, 2, tzinfo=UTC)
ORIGINAL = (
    b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n"
    b"\tby gw.moat.test with ESMTP id 01JORIG000000000000000000B\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.test, carol@example.test\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q1@example.org>\r\n"
    b"\r\n"
    b"The confidential body text.\r\n"
    b"Status: 2.0.0\r\n"
)
BOB = FailedRecipient(
    address="bob@example.test",
    status="5.1.1",
    diagnostic="550 5.1.1 <bob@example.test>: user unknown",
    remote_mta="mx1.example.test",
    last_attempt=ATTEMPT,
)
CAROL = FailedRecipient(
    address="carol@example.test",
    status="5.4.7",
    diagnostic="message lifetime exceeded; last reply: 451 4.3.0 try later",
    remote_mta=None,
    last_attempt=ATTEMPT + timedelta(hours=5),
)


def make(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "reporting_mta": "gw.moat.test",
        "dsn_message_id": "01JDSN0000000000000000000A",
        "original_message_id": "01JORIG000000000000000000B",
        "original_mail_from": "alice@example.org",
        "arrival": ARRIVAL,
        "recipients": [BOB, CAROL],
        "original": ORIGINAL,
    }
    arguments.update(overrides)
    return build_dsn(**arguments)


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(EmailMessage, policy=email.policy.default).parsebytes(data)
    for part in message.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, EmailMessage)]


def blocks(message: EmailMessage) -> list[Message]:
    payload = parts(message)[1].get_payload()
    assert isinstance(payload, list)
    return [block for block in payload if isinstance(block, Message)]


def lines(data: bytes) -> Iterator[bytes]:
    assert data.endswith(b"\r\n")
    yield from data[:-2].split(b"\r\n")


def test_is_a_multipart_report_with_the_three_parts_in_order() -> None:
    data = make()
    message = parse(data)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert parts(message)[0].get_content_charset() == "utf-8"
    # CRLF throughout: no bare LF or CR anywhere.
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_top_level_headers() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    message = parse(make())
    after = datetime.now(UTC)
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@gw.moat.test>"
    assert [a.addr_spec for a in message["To"].addresses] == ["alice@example.org"]
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert before <= parsedate_to_datetime(message["Date"]) <= after
    assert message["Message-ID"] == "<01JDSN0000000000000000000A@gw.moat.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"


def test_to_is_the_sender_in_angle_brackets_and_never_empty() -> None:
    assert b"\r\nTo: <alice@example.org>\r\n" in make()
    # A caller handing over the sender in angle brackets gets no doubled brackets.
    assert b"\r\nTo: <alice@example.org>\r\n" in make(original_mail_from="<alice@example.org>")
    for null in ("", "<>", " \r\n"):
        with pytest.raises(ValueError):
            make(original_mail_from=null)


def test_at_least_one_recipient_is_required() -> None:
    with pytest.raises(ValueError):
        make(recipients=[])


def test_notification_explains_each_failure() -> None:
    text = parts(parse(make()))[0].get_content()
    assert text.startswith("This is the mail system at host gw.moat.test.")
    assert "could not be\r\ndelivered to one or more recipients" in text
    flat = " ".join(text.split())
    assert (
        "<bob@example.test>: host mx1.example.test said: 550 5.1.1 <bob@example.test>: user"
        " unknown" in flat
    )
    assert "<carol@example.test>: message lifetime exceeded; last reply: 451 4.3.0 try later" in (
        flat
    )


def test_per_message_fields() -> None:
    per_message = blocks(parse(make()))[0]
    assert dict(per_message.items()) == {
        "Reporting-MTA": "dns; gw.moat.test",
        "X-Moat-Queue-ID": "01JORIG000000000000000000B",
        "Arrival-Date": "Sat, 01 Mar 2025 09:30:15 +0000",
    }


def test_dates_are_given_in_utc_and_a_naive_one_is_taken_as_utc() -> None:
    late = FailedRecipient(
        "bob@example.test", "5.1.1", "550 no", None, datetime(2025, 3, 2, 1, 0, 0)
    )
    arrival = datetime(2025, 3, 1, 23, 30, 0, tzinfo=timezone(timedelta(hours=-5)))
    per_message, recipient = blocks(parse(make(arrival=arrival, recipients=[late])))
    assert per_message["Arrival-Date"] == "Sun, 02 Mar 2025 04:30:00 +0000"
    assert recipient["Last-Attempt-Date"] == "Sun, 02 Mar 2025 01:00:00 +0000"


def test_one_block_per_recipient_with_its_own_status_and_reply() -> None:
    _, bob, carol = blocks(parse(make()))
    assert list(bob.items()) == [
        ("Final-Recipient", "rfc822; bob@example.test"),
        ("Original-Recipient", "rfc822; bob@example.test"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Remote-MTA", "dns; mx1.example.test"),
        ("Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.test>: user unknown"),
        ("Last-Attempt-Date", "Sat, 01 Mar 2025 09:31:02 +0000"),
    ]
    assert carol["Final-Recipient"] == "rfc822; carol@example.test"
    assert carol["Status"] == "5.4.7"
    # Our own reason is not an SMTP reply, so it does not claim the "smtp" type.
    assert carol["Diagnostic-Code"] == (
        "X-Moat; message lifetime exceeded; last reply: 451 4.3.0 try later"
    )
    assert carol["Last-Attempt-Date"] == "Sat, 01 Mar 2025 14:31:02 +0000"


def test_remote_mta_is_omitted_when_no_server_answered() -> None:
    data = make()
    _, bob, carol = blocks(parse(data))
    assert bob["Remote-MTA"] == "dns; mx1.example.test"
    assert "Remote-MTA" not in carol
    assert data.count(b"Remote-MTA") == 1


def test_status_that_is_no_failure_or_malformed_becomes_5_0_0() -> None:
    odd = [
        FailedRecipient("a@example.test", "2.0.0", "250 2.0.0 Ok", None, ATTEMPT),
        FailedRecipient("b@example.test", "5.1.1\r\nX-Evil: 1", "550 no", None, ATTEMPT),
        FailedRecipient("c@example.test", "", "550 no", None, ATTEMPT),
        FailedRecipient("d@example.test", "5.\u0661.1", "550 no", None, ATTEMPT),  # Arabic 1
    ]
    message = parse(make(recipients=odd))
    assert [b["Status"] for b in blocks(message)[1:]] == ["5.0.0"] * 4
    assert all("X-Evil" not in b for b in blocks(message))


def test_returned_headers_hold_the_header_section_but_never_the_body() -> None:
    data = make()
    returned = parts(parse(data))[2].get_content()
    assert "Subject: Quarterly figures\r\n" in returned
    assert "\tby gw.moat.test with ESMTP" in returned  # continuation lines are kept
    assert "Message-ID: <q1@example.org>" in returned
    assert b"confidential body" not in data
    assert "Status: 2.0.0" not in returned


def test_a_bare_lf_body_does_not_leak_into_the_returned_headers() -> None:
    original = b"From: a@example.org\nSubject: Bare LF\n\nconfidential body\n"
    data = make(original=original)
    returned = parts(parse(data))[2].get_content()
    assert "Subject: Bare LF" in returned
    assert b"confidential" not in data


def test_an_original_that_is_all_header_section_is_returned_whole() -> None:
    returned = parts(parse(make(original=b"Subject: no body\r\nX-Last: unterminated")))[2]
    assert returned.get_content() == "Subject: no body\r\nX-Last: unterminated\r\n"


def test_crlf_in_a_diagnostic_or_address_injects_nothing() -> None:
    evil = FailedRecipient(
        address="bob@example.test\r\nX-Injected-Address: 1",
        status="5.1.1",
        diagnostic=(
            "550 5.1.1 nope\r\nX-Injected: yes\r\n\r\n"
            "Final-Recipient: rfc822; mallory@evil.test\nStatus: 2.0.0\x00\x1b[31m"
        ),
        remote_mta="mx.evil.test\r\nX-Injected-Host: 1",
        last_attempt=ATTEMPT,
    )
    data = make(recipients=[evil])
    message = parse(data)
    assert len(blocks(message)) == 2  # the per-message block and one recipient, no more
    recipient = blocks(message)[1]
    for headers in [message, *parts(message), *blocks(message)]:
        names = {name.lower() for name in headers}
        assert not {n for n in names if n.startswith("x-injected")}, names
    assert recipient["Status"] == "5.1.1"
    assert recipient.get_all("Final-Recipient") == [
        "rfc822; bob@example.test X-Injected-Address: 1"
    ]
    # The reply survives as text on its own field.
    assert recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1 nope X-Injected: yes")
    assert "mallory@evil.test Status: 2.0.0" in recipient["Diagnostic-Code"]
    for line in lines(data):
        assert not line.startswith((b"X-Injected", b"Final-Recipient: rfc822; mallory"))
        assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", line), line


def test_8bit_and_garbage_in_the_original_headers() -> None:
    original = (
        b"From: J\xc3\xb6rg <j@example.org>\r\n"
        b"Subject: caf\xc3\xa9 \xff\xfe broken\r\n"
        b"X-Nul: a\x00b\x0cc\r\n"
        b"this line is no header at all\r\n"
        b": empty name\r\n"
        b"\r\n"
        b"confidential body \xff\r\n"
    )
    data = make(original=original)
    assert data.isascii()  # 7-bit clean, so any hop can carry it without 8BITMIME
    message = parse(data)
    assert len(blocks(message)) == 3  # the report behind it is intact
    returned = parts(message)[2]
    assert returned["Content-Transfer-Encoding"] == "quoted-printable"
    text = returned.get_content()
    assert "From: Jörg <j@example.org>\r\n" in text
    assert "Subject: café \ufffd\ufffd broken\r\n" in text
    assert "X-Nul: a\x00b\x0cc\r\n" in text
    assert "this line is no header at all\r\n: empty name\r\n" in text
    # The declared charset is true: the carried bytes are valid UTF-8, not the raw \xff\xfe.
    raw = returned.get_payload(decode=True)
    assert isinstance(raw, bytes)
    assert raw.decode("utf-8") == text
    assert "confidential" not in text


def test_an_overlong_header_line_in_the_original_is_carried_within_line_limits() -> None:
    long_value = " ".join(["x" * 50] * 100)  # 5099 octets
    data = make(original=b"Subject: " + long_value.encode() + b"\r\n\r\nbody\r\n")
    assert max(len(line) for line in lines(data)) <= 998
    assert parts(parse(data))[2].get_content() == "Subject: " + long_value + "\r\n"


def test_a_very_long_diagnostic_is_folded() -> None:
    words = [f"word{i}" for i in range(500)]
    token = "T" * 3000  # one "word" too long for any line
    long_reply = FailedRecipient(
        "bob@example.test", "5.7.1", "554 5.7.1 " + " ".join(words) + " " + token, None, ATTEMPT
    )
    data = make(recipients=[long_reply], original_message_id="Q" * 990)
    assert max(len(line) for line in lines(data)) <= 998
    report = data.split(b"Content-Type: message/delivery-status\r\n", 1)[1].split(b"\r\n--")[0]
    diagnostic = re.search(rb"Diagnostic-Code:.*?(?=\r\n\S)", report, re.S)
    assert diagnostic is not None
    diagnostic_lines = diagnostic.group().split(b"\r\n")
    assert len(diagnostic_lines) > 40
    assert all(len(line) < 78 for line in diagnostic_lines)
    value = blocks(parse(data))[1]["Diagnostic-Code"]
    assert value.startswith("smtp; 554 5.7.1 word0 word1 word2 ")
    # Folding only added line breaks in front of spaces, except inside the unbreakable token.
    assert value.split()[3:503] == words
    assert "".join(value.split()[503:]) == token
    assert all(len(line) <= 76 for line in lines(parts(parse(data))[0].get_content().encode()))


def test_non_ascii_in_replies_and_addresses() -> None:
    recipient = FailedRecipient(
        "jörg@exämple.test",
        "5.2.2",
        "552 5.2.2 Postfach voll \u2013 bitte später",
        "mx.exämple.test",
        ATTEMPT,
    )
    message = parse(make(recipients=[recipient]))
    block = blocks(message)[1]
    # The delivery-status part is US-ASCII: RFC 6533's utf-8 address type, escaped text.
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@ex\\x{E4}mple.test"
    assert block["Diagnostic-Code"] == "smtp; 552 5.2.2 Postfach voll \\x{2013} bitte sp\\x{E4}ter"
    assert block["Remote-MTA"] == "dns; mx.xn--exmple-cua.test"
    text = parts(message)[0].get_content()
    assert "<jörg@exämple.test>: host mx.xn--exmple-cua.test said: 552 5.2.2" in text
    assert "Postfach voll \u2013 bitte später" in " ".join(text.split())


def test_the_boundary_never_occurs_in_the_content(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(secrets, "token_hex", lambda _: next(tokens))
    original = b"X-Trap: --=_moat_" + b"a" * 32 + b"\r\n\r\nbody\r\n"
    message = parse(make(original=original))
    assert message.get_boundary() == "=_moat_" + "b" * 32
    assert len(parts(message)) == 3
    assert "X-Trap: --=_moat_" + "a" * 32 in parts(message)[2].get_content()


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 <bob@example.test>: user unknown", "5.1.1"),
        (550, "550 5.1.1 <bob@example.test>: user unknown", "5.1.1"),  # the whole reply line
        (451, "4.7.1 greylisted, try again later", "4.7.1"),
        (250, "2.0.0 Ok: queued", "2.0.0"),
        (554, "5.7.123 policy", "5.7.123"),
        (550, "user unknown", "5.0.0"),
        (421, "Service not available", "4.0.0"),
        (550, "", "5.0.0"),
        (550, "4.2.2 mailbox full", "5.0.0"),  # class mismatch
        (452, "5.2.2 mailbox full", "4.0.0"),  # class mismatch
        (550, "please see 5.1.1 below", "5.0.0"),  # not at the start
        (550, "5.1.1234 too many digits", "5.0.0"),
        (550, "5.1.1.1 not a status", "5.0.0"),
        (550, "5.\u0661.\u0661 non-ASCII digits", "5.0.0"),
        (354, "3.0.0 go ahead", "4.5.0"),  # no such status class
        (None, "", "4.4.1"),
        (None, "5.1.1 stale text", "4.4.1"),
    ],
)
def test_enhanced_status(code: int | None, text: str, expected: str) -> None:
    assert enhanced_status(code, text) == expected
