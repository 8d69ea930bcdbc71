"""Delivery status notifications (bounces) per RFC 3464, in a multipart/report (RFC 6522).

The message is assembled as text here rather than with ``email.message.EmailMessage``: the
generator re-folds header fields by its own rules (and may turn long words into RFC 2047
encoded-words), which is wrong for the machine-readable DSN fields, and it cannot be told to
pass the original's possibly broken header bytes through unchanged. ``email.utils`` supplies
the dates, and the stdlib parser is what the tests read the result back with.

Everything that is not ours (the remote reply, addresses, the original's headers) is reduced to
a single line or transfer-encoded, so none of it can start a header field or a MIME part. The
result is 7-bit except for a non-ASCII sender address in ``To:`` (RFC 6532), which can only be
delivered over SMTPUTF8 anyway.
"""

from __future__ import annotations

import binascii
import contextlib
import re
import secrets
import textwrap
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

# RFC 5322: lines SHOULD be at most 78 characters and MUST be at most 998 (both without CRLF).
_SOFT_LIMIT = 76
_HARD_LIMIT = 998
_CRLF = "\r\n"

# re.ASCII: \d would otherwise accept any Unicode digit, and a status has to be ASCII.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}", re.ASCII)
_SMTP_REPLY = re.compile(r"\d{3}(?:[ -]|$)", re.ASCII)
# What may appear in a host name or address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]").
_NOT_HOST = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
# atext (RFC 5322) plus ".": what may stand left of the "@" in a Message-ID, or in a queue id.
_NOT_ID = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]")
# Line ends as Python's email parser sees them; splitting the original any more strictly could
# make it see a bare-LF body as part of the header section we return.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_CLEAN_7BIT_LINE = re.compile(rb"[\t\x20-\x7e]*")


@dataclass(frozen=True)
class FailedRecipient:
    address: str
    status: str
    diagnostic: str
    remote_mta: str | None
    last_attempt: datetime


def build_dsn(
    *,
    reporting_mta: str,
    dsn_message_id: str,
    original_message_id: str,
    original_mail_from: str,
    arrival: datetime,
    recipients: Sequence[FailedRecipient],
    original: bytes,
) -> bytes:
    """The complete DSN message, CRLF line endings, ready to send with the null envelope sender.

    Raises ValueError for a null or empty sender (a DSN must never go to "<>", RFC 5321
    section 4.5.5), no recipients, or an identifier that is empty once sanitised.
    """
    host = _host(reporting_mta)
    local_id = _NOT_ID.sub("", dsn_message_id)
    queue_id = _NOT_ID.sub("", original_message_id)
    sender = _one_line(original_mail_from).strip("<>")
    if not sender:
        raise ValueError("a DSN cannot be sent to the null sender")
    if not recipients:
        raise ValueError("a DSN needs at least one failed recipient")
    if not host or not local_id or not queue_id:
        raise ValueError("reporting_mta, dsn_message_id and original_message_id must be non-empty")

    notification = _notification(host, recipients)
    report = _report(host, queue_id, arrival, recipients).encode("ascii")
    returned_headers, headers_encoding = _returned_headers(original)
    if notification.isascii():
        notification_body, notification_encoding = notification.encode("ascii"), "7bit"
    else:
        notification_body = _quoted_printable(
            notification.encode("utf-8").removesuffix(b"\r\n").split(b"\r\n")
        )
        notification_encoding = "quoted-printable"
    boundary = _boundary(notification_body, report, returned_headers)

    headers = [
        "From: Mail Delivery System <MAILER-DAEMON@" + host + ">",
        "To: <" + sender + ">",
        "Subject: Undelivered Mail Returned to Sender",
        "Date: " + _date(datetime.now(UTC)),
        "Message-ID: <" + local_id + "@" + host + ">",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        '\tboundary="' + boundary + '"',
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    parts: list[tuple[list[str], bytes]] = [
        (
            [
                "Content-Description: Notification",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: " + notification_encoding,
            ],
            notification_body,
        ),
        (
            [
                "Content-Description: Delivery report",
                "Content-Type: message/delivery-status",
            ],
            report,
        ),
        (
            [
                "Content-Description: Undelivered Message Headers",
                "Content-Type: text/rfc822-headers"
                + ("; charset=utf-8" if headers_encoding == "quoted-printable" else ""),
                "Content-Transfer-Encoding: " + headers_encoding,
            ],
            returned_headers,
        ),
    ]
    out = [_CRLF.join(headers).encode("utf-8"), b"\r\n"]
    for part_headers, body in parts:
        out.append(b"--" + boundary.encode("ascii") + b"\r\n")
        out.append(_CRLF.join([*part_headers, "", ""]).encode("ascii"))
        # Each body ends in CRLF; the CRLF in front of the next delimiter belongs to the
        # delimiter (RFC 2046 section 5.1.1), so this one has to be written as well.
        out.append(body + b"\r\n")
    out.append(b"--" + boundary.encode("ascii") + b"--\r\n")
    return b"".join(out)


def _notification(host: str, recipients: Sequence[FailedRecipient]) -> str:
    """Part 1: the explanation for people, in Postfix's words. Ends in CRLF."""
    paragraphs = [
        f"This is the mail system at host {host}.",
        "I'm sorry to have to inform you that your message could not be delivered to one or"
        " more recipients. The headers of your message are attached below.",
        "For further assistance, please send mail to postmaster.",
        "If you do so, please include this problem report.",
    ]
    lines: list[str] = []
    for paragraph in paragraphs:
        lines.extend(textwrap.wrap(paragraph, width=64))
        lines.append("")
    lines.extend(["                   The mail system", ""])
    for recipient in recipients:
        address = _one_line(recipient.address)
        diagnostic = _one_line(recipient.diagnostic) or (
            f"delivery failed with status {_status(recipient.status)}"
        )
        remote = _host(recipient.remote_mta) if recipient.remote_mta is not None else ""
        said = f"host {remote} said: {diagnostic}" if remote else diagnostic
        # break_long_words keeps every line short even for a reply with no spaces in it.
        lines.extend(
            textwrap.wrap(
                f"<{address}>: {said}",
                width=_SOFT_LIMIT,
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        )
        lines.append("")
    return _CRLF.join(lines[:-1]) + _CRLF


def _report(
    host: str, queue_id: str, arrival: datetime, recipients: Sequence[FailedRecipient]
) -> str:
    """Part 2: the message/delivery-status body (US-ASCII only, RFC 3464 section 2.1). Ends in
    CRLF; blocks are separated by one empty line."""
    blocks = [
        [
            _field("Reporting-MTA", f"dns; {host}"),
            _field("X-Moat-Queue-ID", queue_id),
            _field("Arrival-Date", _date(arrival)),
        ]
    ]
    for recipient in recipients:
        address = _typed_address(recipient.address)
        block = [
            _field("Final-Recipient", address),
            _field("Original-Recipient", address),
            "Action: failed",
            "Status: " + _status(recipient.status),
        ]
        remote = _host(recipient.remote_mta) if recipient.remote_mta is not None else ""
        if remote:
            block.append(_field("Remote-MTA", f"dns; {remote}"))
        diagnostic = _one_line(recipient.diagnostic)
        if diagnostic:
            # "smtp" promises an SMTP reply (RFC 3464 section 2.3.6); our own reasons, such as
            # an expired lifetime, get an X- type the way Postfix uses "X-Postfix".
            kind = "smtp" if _SMTP_REPLY.match(diagnostic) else "X-Moat"
            block.append(_field("Diagnostic-Code", f"{kind}; {_escape_non_ascii(diagnostic)}"))
        block.append(_field("Last-Attempt-Date", _date(recipient.last_attempt)))
        blocks.append(block)
    return (_CRLF + _CRLF).join(_CRLF.join(block) for block in blocks) + _CRLF


def _returned_headers(original: bytes) -> tuple[bytes, str]:
    """Part 3: the original's header section, up to its first empty line, and the transfer
    encoding it needs. Ends in CRLF unless empty."""
    lines: list[bytes] = []
    start = 0
    for line_end in _LINE_END.finditer(original):
        line = original[start : line_end.start()]
        if not line:
            break
        lines.append(line)
        start = line_end.end()
    else:
        # No empty line at all: the message is all header section.
        if original[start:]:
            lines.append(original[start:])
    if all(_CLEAN_7BIT_LINE.fullmatch(line) and len(line) <= _HARD_LIMIT for line in lines):
        return b"".join(line + b"\r\n" for line in lines), "7bit"
    # 8-bit, control characters (NUL is not allowed even in 8bit data, RFC 2045 section 2.8) or
    # overlong lines: quoted-printable carries them safely over any hop. Bytes that are not
    # UTF-8 are replaced so that the declared charset is true.
    decoded = [line.decode("utf-8", errors="replace").encode("utf-8") for line in lines]
    return _quoted_printable(decoded), "quoted-printable"


def _quoted_printable(lines: Iterable[bytes]) -> bytes:
    """Quoted-printable (RFC 2045 section 6.7) of lines that contain no CR or LF; each encoded
    line ends in CRLF, soft breaks included."""
    encoded = []
    for line in lines:
        # istext=False so that nothing in the line can be taken for a line break.
        quoted = binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
        encoded.append(quoted.replace(b"=\n", b"=\r\n") + b"\r\n")
    return b"".join(encoded)


def _boundary(*contents: bytes) -> str:
    # "=_" cannot occur in quoted-printable output; the check covers the 7bit parts.
    while True:
        boundary = "=_moat_" + secrets.token_hex(16)
        if not any(boundary.encode("ascii") in content for content in contents):
            return boundary


def _field(name: str, value: str) -> str:
    """`name: value` folded at spaces to lines of at most 76 characters where possible (joined
    with CRLF, no trailing CRLF). Folding only adds CRLF in front of existing spaces, so
    unfolding restores the value, except that runs of spaces become one and a word too long
    for a 998-octet line is cut into pieces with spaces between them."""
    lines: list[str] = []
    current = name + ":"
    has_word = False
    for word in value.split():
        pieces = [word]
        # The longest prefix a word can get is "name: " on the first line.
        if len(name) + 2 + len(word) > _HARD_LIMIT:
            pieces = [word[i : i + _SOFT_LIMIT - 1] for i in range(0, len(word), _SOFT_LIMIT - 1)]
        for piece in pieces:
            if has_word and len(current) + 1 + len(piece) > _SOFT_LIMIT:
                lines.append(current)
                current = " " + piece
            else:
                current += " " + piece
            has_word = True
    lines.append(current)
    return _CRLF.join(lines)


def _one_line(text: str) -> str:
    """`text` without line breaks or other control characters, whitespace runs made one space.

    Lone surrogates (a reply decoded with surrogateescape) become U+FFFD since they cannot be
    encoded; Unicode line and paragraph separators count as line breaks."""
    cleaned = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):
            cleaned.append(" ")
        elif category == "Cs":
            cleaned.append("\ufffd")
        else:
            cleaned.append(char)
    return " ".join("".join(cleaned).split())


def _host(name: str) -> str:
    name = _one_line(name)
    if not name.isascii():
        # Whatever the IDNA codec cannot convert is filtered out below.
        with contextlib.suppress(UnicodeError):
            name = name.encode("idna").decode("ascii")
    return _NOT_HOST.sub("", name)


def _status(status: str) -> str:
    status = status.strip()
    # "Action: failed" with a 2.x.x status would contradict itself; 4.x.x stays, since it is
    # what a message that expired after transient failures gets (RFC 3463 "persistent
    # transient failure"), as Postfix and Sendmail report it.
    if _STATUS.fullmatch(status) and not status.startswith("2"):
        return status
    return "5.0.0"


def _typed_address(address: str) -> str:
    """An address with its RFC 3464 address type: "rfc822" for ASCII, otherwise "utf-8" in the
    utf-8-addr-xtext form that message/delivery-status requires (RFC 6533 section 3)."""
    address = _one_line(address)
    if address.isascii():
        return "rfc822; " + address
    return "utf-8; " + "".join(
        char if 0x21 <= ord(char) <= 0x7E and char not in "+=\\" else f"\\x{{{ord(char):02X}}}"
        for char in address
    )


def _escape_non_ascii(text: str) -> str:
    # The delivery-status part is US-ASCII; the notification keeps the text as it was.
    return "".join(char if char.isascii() else f"\\x{{{ord(char):02X}}}" for char in text)


def _date(moment: datetime) -> str:
    if moment.tzinfo is None:
        # The contract is aware UTC; a naive value is most likely UTC that lost its zone.
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC))
