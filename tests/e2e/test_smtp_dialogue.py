"""What ingress refuses during the SMTP dialogue, with precise reply codes."""

from __future__ import annotations

import smtplib

import pytest

from tests.harness import Gateway, make_message

pytestmark = pytest.mark.e2e


def test_ehlo_advertises_the_extensions(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        for extension in ("size", "pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8"):
            assert client.has_extn(extension), extension
        assert client.esmtp_features["size"] == "200000"


def test_relay_attempt_refused_at_rcpt(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        client.mail("spammer@outside.test")
        code, text = client.rcpt("victim@elsewhere.test")
        assert code == 554
        assert text.startswith(b"5.7.1 ")
        code, _ = client.rcpt("bob@EXAMPLE.test")  # domains match case-insensitively
        assert code == 250


def test_oversize_refused_at_mail_and_after_data(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@outside.test", ["SIZE=300000"])
        assert (code, text[:6]) == (552, b"5.3.4 ")
    message = make_message(
        "alice@outside.test", ["bob@example.test"], ("x" * 70 + "\n") * 3500, "big"
    )
    with gateway.smtp() as client:  # no SIZE declared: refused after the data
        client.ehlo("client.test")
        client.mail("alice@outside.test")
        client.rcpt("bob@example.test")
        code, text = client.data(message.as_bytes())
    assert (code, text[:6]) == (552, b"5.3.4 ")


def test_mail_loop_refused(gateway: Gateway) -> None:
    hops = "".join(
        f"Received: from hop{i}.test by hop{i + 1}.test; Sun, 29 Nov 2026 04:00:00 +0000\r\n"
        for i in range(51)
    )
    message = make_message("alice@outside.test", ["bob@example.test"], "loop", "loop")
    with gateway.smtp() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.ehlo("client.test")
        client.sendmail(
            "alice@outside.test", ["bob@example.test"], hops.encode() + message.as_bytes()
        )
    assert (refused.value.smtp_code, refused.value.smtp_error[:6]) == (554, b"5.4.0 ")


def test_fifty_received_headers_are_fine(gateway: Gateway) -> None:
    hops = "".join(
        f"Received: from hop{i}.test by hop{i + 1}.test; Sun, 29 Nov 2026 04:00:00 +0000\r\n"
        for i in range(49)
    )
    message = make_message("alice@outside.test", ["bob@example.test"], "hops", "hops")
    with gateway.smtp() as client:
        client.ehlo("client.test")
        client.sendmail(
            "alice@outside.test", ["bob@example.test"], hops.encode() + message.as_bytes()
        )  # ours makes 50


def test_too_many_recipients(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        client.mail("alice@outside.test")
        for i in range(10):
            assert client.rcpt(f"user{i}@example.test")[0] == 250
        code, text = client.rcpt("user10@example.test")
        assert (code, text[:6]) == (452, b"4.5.3 ")


def test_syntax_errors_get_5xx_with_enhanced_codes(gateway: Gateway) -> None:
    with gateway.smtp() as client:
        client.ehlo("client.test")
        code, text = client.docmd("MAIL FROM:<broken")
        assert code == 501 and text.startswith(b"5.1.7 "), (code, text)
        code, text = client.docmd("MAIL FROM:<")  # email's parser raises IndexError on it
        assert code == 553 and text.startswith(b"5.1.3 "), (code, text)
        code, text = client.docmd("MAIL alice@outside.test")
        assert code == 501 and text.startswith(b"5.5.4 "), (code, text)
        code, text = client.docmd("RCPT TO:<bob@example.test>")
        assert code == 503 and text.startswith(b"5.5.1 "), (code, text)
        code, text = client.docmd("FROBNICATE")
        assert code == 500 and text.startswith(b"5.5.2 "), (code, text)
        client.mail("alice@outside.test")
        code, text = client.rcpt("no-at-sign")
        assert code in (501, 553) and text[:2] == b"5.", (code, text)
