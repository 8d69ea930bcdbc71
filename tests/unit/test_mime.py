"""moat/mime.py: the main headers as people read them, and the safe preview."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

from moat.mime import main_headers, parse_limited, preview
from tests.support.mime import nested_multipart


def _message(**parts: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "=?utf-8?q?J=C3=B6rg?= <jorg@outside.test>"
    message["To"] = "bob@example.test"
    message["Subject"] = "=?utf-8?q?Hello_=E2=9C=93?= and\tmore"
    message["Message-ID"] = "<1@outside.test>"
    if "plain" in parts:
        message.set_content(parts["plain"])
    if "html" in parts:
        if "plain" in parts:
            message.add_alternative(parts["html"], subtype="html")
        else:
            message.set_content(parts["html"], subtype="html")
    if "attachment" in parts:
        message.add_attachment(
            parts["attachment"].encode(),
            maintype="application",
            subtype="pdf",
            filename="invoice.pdf",
        )
    return message.as_bytes()


def test_main_headers_are_decoded_and_one_line() -> None:
    message, too_deep = parse_limited(_message(plain="x"))
    headers = main_headers(message)
    assert not too_deep
    assert headers.from_ == "Jörg <jorg@outside.test>"
    assert headers.subject == "Hello ✓ and more"  # decoded, whitespace made one space
    assert headers.message_id == "<1@outside.test>"


def test_raw_utf8_headers_are_read_as_utf8() -> None:
    # RFC 6532 mail carries UTF-8 in the header itself; compat32 wraps such a header as
    # "unknown-8bit", whose str() made every byte a replacement character.
    raw = "Subject: Grüße aus\r\n Köln\x01\r\nFrom: Jürgen <j@outside.test>\r\n\r\nx\r\n"
    headers = main_headers(parse_limited(raw.encode())[0])
    assert headers.subject == "Grüße aus Köln"  # folding undone, the control character a space
    assert headers.from_ == "Jürgen <j@outside.test>"


def test_plain_text_is_preferred_and_attachments_are_listed_not_opened() -> None:
    shown = preview(_message(plain="Hello Bob.", html="<p>HTML</p>", attachment="%PDF-1.7 x"))
    assert shown.source == "text/plain"
    assert shown.text.strip() == "Hello Bob."
    [attachment] = shown.attachments
    assert (attachment.filename, attachment.content_type, attachment.size) == (
        "invoice.pdf",
        "application/pdf",
        10,
    )
    assert "%PDF" not in shown.text


def test_html_is_rendered_as_text_without_active_or_remote_content() -> None:
    html = (
        "<html><head><title>t</title><style>p{color:red}</style>"
        "<script>alert('x')</script></head><body>"
        "<p>Dear <b>Bob</b>,</p><p>Click <a href='https://evil.test/login'>here</a>.</p>"
        "<img src='https://tracker.test/pixel.gif' alt='logo'>"
        "<iframe src='https://evil.test'>frame text</iframe>"
        "<p>&lt;script&gt; is shown as text</p></body></html>"
    )
    shown = preview(_message(html=html))
    assert shown.source == "text/html"
    assert "alert" not in shown.text and "color:red" not in shown.text
    assert "frame text" not in shown.text
    assert "Dear Bob," in shown.text
    assert "Click here [https://evil.test/login]." in shown.text
    assert "[image: logo]" in shown.text and "tracker.test" not in shown.text
    assert "<script> is shown as text" in shown.text  # an entity stays text
    assert shown.links == ["https://evil.test/login"]


def test_long_bodies_are_cut_and_deep_mime_does_not_break_it() -> None:
    shown = preview(_message(plain="x" * 5000), limit=1000)
    assert shown.truncated and len(shown.text) == 1000
    deep = preview(nested_multipart(1200))
    assert deep.too_deep and deep.text == ""
