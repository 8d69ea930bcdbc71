"""The reply catalogue's enhanced codes and ingress's pure rules."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from moat import replies
from services.ingress.handler import (
    _PLAIN_ADDRESS,
    MoatSMTP,
    count_received_headers,
    is_mailbox,
    normalise_line_endings,
    strip_forged_headers,
)
from tests.support.generated import fragment_strings


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
        ("j\udcf6rg@example.test", False),  # Latin-1 "ö", which aiosmtpd reads as a surrogate
        ('"j\udcf6rg"@example.test', False),
        ("bob@ex\udce4mple.test", False),
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


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (b"a\rb\r\n", b"a\r\nb\r\n"),  # a bare CR
        (b"a\nb\r\n", b"a\r\nb\r\n"),  # a bare LF
        (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),  # CR CR LF: a bare CR, then a CRLF
        (b"a\n\r\nb\r\n", b"a\r\n\r\nb\r\n"),  # LF CR LF: a bare LF, then a CRLF
        (b"a\n\rb", b"a\r\n\r\nb"),  # LF CR: two bare ones, not one CRLF backwards
        (b"a\r", b"a\r\n"),  # a lone CR at the end
        (b"a\n", b"a\r\n"),
        (b"\r\r\r", b"\r\n\r\n\r\n"),
        (b"", b""),
        # The header/body boundary: an empty line of bare line breaks ends the header too.
        (b"Subject: s\r\rbody\r\n", b"Subject: s\r\n\r\nbody\r\n"),
        (b"Subject: s\n\nbody\r\n", b"Subject: s\r\n\r\nbody\r\n"),
        (b"Subject: s\r\n\rbody\r\n", b"Subject: s\r\n\r\nbody\r\n"),
        # A dot alone after a bare LF (SMTP smuggling's trick) is a line like any other now;
        # the relay client dot-stuffs it, so it cannot end the data downstream.
        (b"x\n.\r\nMAIL FROM:<a@b.test>\r\n", b"x\r\n.\r\nMAIL FROM:<a@b.test>\r\n"),
        ("é\r€\n".encode(), "é\r\n€\r\n".encode()),  # 8-bit text untouched
    ],
)
def test_bare_cr_and_bare_lf_become_crlf(given: bytes, expected: bytes) -> None:
    assert normalise_line_endings(given) == expected
    assert normalise_line_endings(expected) == expected


def test_mail_with_crlf_only_is_returned_as_it_is() -> None:
    clean = b"Subject: s\r\n\r\nbody\r\n"
    assert normalise_line_endings(clean) is clean


def test_lines_hidden_behind_bare_line_breaks_are_counted_and_stripped() -> None:
    data = normalise_line_endings(
        b"Received: a\rReceived: b\nSubject: s\rX-Moat-Verdict: clean\r\n"
        b"Authentication-Results: moat.test; dkim=pass\r\n\rReceived: in the body\r\n"
    )
    assert count_received_headers(data) == 2
    assert strip_forged_headers(data, "moat.test") == (
        b"Received: a\r\nReceived: b\r\nSubject: s\r\n\r\nReceived: in the body\r\n"
    )


@pytest.mark.parametrize("local_part_limit", [0, 6])
def test_mail_and_rcpt_addresses_are_read_as_aiosmtpd_reads_them(local_part_limit: int) -> None:
    """The fast reading of plain addresses gives what aiosmtpd's own gives, for every input."""
    ours = MoatSMTP.__new__(MoatSMTP)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    fragments = ["<", ">", "a", "Bob", ".", "@", "example", ".test", "-", "_", "+", "=", "!"]
    fragments += [" ", "\t", "SIZE=5120", "BODY=8BITMIME", "(c)", ")", '"q q"', "[192.0.2.1]"]
    fragments += ["\u00e9", ":", ",", "\\"]
    samples = fragment_strings(fragments, 8_000, seed=7, longest=14, shortest=0)
    rng = random.Random(7)
    samples += [
        "<alice@outside.test> SIZE=5120 BODY=8BITMIME",
        "<bob@example.test>",
        "<>",
        " <a.b+c@x-y.example.test>  SIZE=1 ",
        "<a..b@x.test>",
        "<a@-x.test>",
        "<a@x.test>(comment) SIZE=1",
        "<a@x.test>SIZE=1",
        "<alice.long@x.test>",
    ]
    atoms, labels = ["a", "Bob", "x+y", "o'k", "=", "_", "-"], ["example", "x-y", "1", "-a", "b-"]
    rests = ["", " SIZE=5120", "\tBODY=8BITMIME", " (c)", "SIZE=1", "  ", " a(b"]
    for _ in range(6_000):
        local = ".".join(rng.choice(atoms) for _ in range(rng.randint(1, 3)))
        domain = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 3)))
        sample = f"{rng.choice(['', ' '])}<{local}@{domain}>{rng.choice(rests)}"
        if rng.random() < 0.3:  # and some spoilt
            at = rng.randint(0, len(sample))
            sample = sample[:at] + rng.choice(fragments) + sample[at:]
        samples.append(sample)

    def read(server: SMTP, arg: str) -> object:
        try:
            return server._getaddr(arg)
        except IndexError:  # email's parser raises on "<" and the like: unreadable for us
            return None, None

    fast = 0
    for sample in samples:
        assert read(ours, sample) == read(theirs, sample), repr(sample)
        fast += _PLAIN_ADDRESS.match(sample) is not None
    assert fast > 1000  # the plain form was tried often enough to mean something
    assert ours._getaddr("<") == (None, None)
