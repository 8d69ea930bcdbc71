"""The reply catalogue's enhanced codes and ingress's pure rules."""

from __future__ import annotations

import pytest

from moat import replies
from services.ingress.handler import count_received_headers, is_mailbox


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("250 OK", "250 2.0.0 Ok"),
        ("552 Error: Too much mail data", replies.MESSAGE_TOO_BIG),
        ("552 Error: message size exceeds fixed maximum message size", replies.MESSAGE_TOO_BIG),
        ("503 Error: need MAIL command", "503 5.5.1 need MAIL command"),
        ('500 Error: command "X" not recognized', '500 5.5.2 command "X" not recognized'),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("550 5.7.1 already coded", "550 5.7.1 already coded"),
        ("220 moat.test Moat ESMTP", "220 moat.test Moat ESMTP"),  # greeting: none (RFC 2034)
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_with_enhanced_code(given: str, expected: str) -> None:
    assert replies.with_enhanced_code(given) == expected


def test_every_catalogue_reply_has_an_enhanced_code() -> None:
    for name in dir(replies):
        value = getattr(replies, name)
        if name.isupper() and isinstance(value, str):
            code, enhanced = value.split()[:2]
            assert enhanced[0] == code[0] and enhanced.count(".") == 2, name


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("bob@example.test", True),
        ("bob.o'neil+tag@sub.example.test", True),
        ('"odd local"@example.test', True),
        ("δοκιμή@παράδειγμα.δοκιμή", True),
        ("<broken", False),
        ("no-at-sign", False),
        ("bob@localhost", False),
        ("@example.test", False),
        ("bob@", False),
        ("bo b@example.test", False),
        ("bob@exa mple.test", False),
        ("bob@[127.0.0.1]", False),
        ("a<b>@example.test", False),
    ],
)
def test_is_mailbox(address: str, ok: bool) -> None:
    assert is_mailbox(address) is ok


def test_count_received_headers_counts_only_the_header_section() -> None:
    data = (
        b"Received: a\r\nreceived : b\r\nX-Received: no\r\nSubject: s\r\n\r\n"
        b"Received: in the body, not counted\r\n"
    )
    assert count_received_headers(data) == 2
    assert count_received_headers(b"Received: x\nReceived: y\n\nbody") == 2


def test_forged_verdict_and_authentication_headers_are_stripped() -> None:
    from services.ingress.handler import strip_forged_headers

    data = (
        b"X-Moat-Verdict: clean\r\n"
        b"Subject: hi\r\n"
        b"Authentication-Results: moat.test; dkim=pass\r\n  header.d=bank.test\r\n"
        b"Authentication-Results: other.test; spf=fail\r\n"
        b"X-Moat-Score: -100\r\n"
        b"\r\n"
        b"X-Moat-Verdict: in the body stays\r\n"
    )
    assert strip_forged_headers(data, "MOAT.test") == (
        b"Subject: hi\r\n"
        b"Authentication-Results: other.test; spf=fail\r\n"
        b"\r\n"
        b"X-Moat-Verdict: in the body stays\r\n"
    )
    clean = b"Subject: hi\r\n\r\nbody\r\n"
    assert strip_forged_headers(clean, "moat.test") is clean
