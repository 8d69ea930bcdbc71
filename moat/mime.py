"""Reading mail: the parse every service shares (the scanner's checks, the API's preview and
search headers), bounded in MIME depth, and a safe text rendering of a message for people.

The parser runs with the ``compat32`` policy, whose headers are plain strings: the modern
``policy.default`` parses every header it touches into objects, which cost 12 ms per message on
average over the SpamAssassin corpus against 0.3 ms, and several seconds on a single hostile
``Content-Type`` (a denial of service).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.header import Header, decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from html.parser import HTMLParser

# Postfix's mime_nesting_limit; the scanner's policy may set less.
MAX_MIME_DEPTH = 100


def parse_limited(raw: bytes, max_depth: int = MAX_MIME_DEPTH) -> tuple[Message, bool]:
    """The parsed message, and whether it nests deeper than ``max_depth``: then the parse
    stopped there and what is returned is its top-level header over an unparsed body."""
    parser = _DepthLimitedParser(max_depth)
    try:
        parser.feed(raw)
        return parser.close(), False
    except MimeTooDeep:
        return BytesParser(policy=compat32).parsebytes(raw, headersonly=True), True


class MimeTooDeep(Exception):
    """The message nests MIME entities deeper than its parse may go."""


class _DepthLimitedParser(BytesFeedParser):
    """email's parser (``compat32``), stopped at a MIME nesting depth.

    The parser opens each nested entity (a multipart's part, an attached message, a
    delivery-status block) in a generator one inside the other: at about 980 levels it raised
    RecursionError itself, so the tree cannot be parsed first and measured afterwards. The
    entities open at once are counted as the parser opens and closes them, through its own
    two private hooks (not public API: tests/unit/test_checks.py pins what this relies on, and
    fails on a Python whose parser no longer calls them), and one too many ends the parse."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(policy=compat32)
        self._max_depth = max_depth
        self._depth = 0

    def _new_message(self) -> None:
        if self._depth >= self._max_depth:
            raise MimeTooDeep(f"MIME nesting deeper than {self._max_depth}")
        self._depth += 1
        super()._new_message()  # type: ignore[misc]

    def _pop_message(self) -> Message:
        self._depth -= 1
        popped: Message = super()._pop_message()  # type: ignore[misc]
        return popped


def walk(message: Message) -> Iterator[tuple[Message, int]]:
    """Every entity of a parsed message with its depth (the message itself is 1), in the order
    of ``Message.walk()``, but without its recursion: nothing walking a tree recurses per level."""
    stack: list[tuple[Message, int]] = [(message, 1)]
    while stack:
        entity, depth = stack.pop()
        yield entity, depth
        payload = entity.get_payload() if entity.is_multipart() else None
        if isinstance(payload, list):
            stack.extend(
                (child, depth + 1) for child in reversed(payload) if isinstance(child, Message)
            )


def content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # a header so broken the parser's defaults fail too
        return "application/octet-stream"


def filename(part: Message) -> str | None:
    """The attachment's name, RFC 2231 and RFC 2047 encodings undone."""
    try:
        name = part.get_filename()
    except Exception:
        return None
    if not name:
        return None
    name = str(name)
    if "=?" in name:
        with contextlib.suppress(Exception):  # a broken encoded-word: keep it as sent
            name = str(make_header(decode_header(name)))
    return name


def decoded_payload(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a broken encoding: fall back to the part as it was sent
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


# --- what people see: the main headers, and a safe text rendering ----------------------------

_HEADER_LIMIT = 998  # RFC 5322's line limit: plenty for a subject shown in a list


def decoded(value: object) -> str:
    """A header value as text: RFC 2047 encoded-words undone (a broken one kept as sent), raw
    8-bit bytes read as UTF-8 (RFC 6532), line breaks and control characters made spaces, cut
    at 998 characters. The scanner runs it on every message: the common header (printable once
    its folding is undone) costs two C-level string passes."""
    if isinstance(value, Header):
        # compat32 hands a header with 8-bit bytes back as a Header of charset unknown-8bit,
        # whose str() turns every byte into U+FFFD; its bytes are almost always UTF-8.
        text = "".join(_chunk_text(chunk, charset) for chunk, charset in decode_header(value))
    else:
        text = str(value)
    if "=?" in text:
        with contextlib.suppress(Exception):
            text = str(make_header(decode_header(text)))
    text = " ".join(text.split())
    if not text.isprintable():
        text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:_HEADER_LIMIT]


def _chunk_text(chunk: bytes | str, charset: str | None) -> str:
    if isinstance(chunk, str):
        return chunk
    codec = "utf-8" if charset in (None, "unknown-8bit", "us-ascii") else str(charset)
    try:
        return chunk.decode(codec, errors="replace")
    except LookupError:
        return chunk.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class MainHeaders:
    subject: str | None = None
    from_: str | None = None
    to: str | None = None
    date: str | None = None
    message_id: str | None = None


def main_headers(message: Message) -> MainHeaders:
    """Subject, From, To, Date and Message-ID of a parsed message, decoded (the first of each)."""

    def first(name: str) -> str | None:
        value = message.get(name)
        return decoded(value) if value is not None else None

    return MainHeaders(
        subject=first("Subject"),
        from_=first("From"),
        to=first("To"),
        date=first("Date"),
        message_id=first("Message-ID"),
    )


@dataclass(frozen=True)
class AttachmentInfo:
    filename: str | None
    content_type: str
    size: int


@dataclass
class Preview:
    """A message for people to look at, made safe: text only. Scripts, styles and remote
    content are dropped, never run or fetched; a link is shown as its text and its address,
    never as something to click; attachments are listed, not opened."""

    headers: MainHeaders
    text: str = ""
    source: str = "none"  # text/plain, text/html, or none
    truncated: bool = False
    links: list[str] = field(default_factory=list)
    attachments: list[AttachmentInfo] = field(default_factory=list)
    too_deep: bool = False


def preview(raw: bytes, limit: int = 100_000) -> Preview:
    """The safe rendering of ``raw``: the first text/plain body, else the first text/html one
    turned into text, cut at ``limit`` characters."""
    message, too_deep = parse_limited(raw)
    result = Preview(main_headers(message), too_deep=too_deep)
    plain: Message | None = None
    rich: Message | None = None
    for part, _ in walk(message):
        if part.is_multipart():
            continue
        kind = content_type(part)
        disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
        name = filename(part)
        readable = kind in ("text/plain", "text/html") and disposition != "attachment"
        if not readable or name is not None:
            result.attachments.append(AttachmentInfo(name, kind, len(decoded_payload(part))))
            continue
        if kind == "text/plain" and plain is None:
            plain = part
        elif kind == "text/html" and rich is None:
            rich = part
    chosen = plain or rich
    if chosen is not None:
        body = _text_of(chosen).replace("\r\n", "\n").replace("\r", "\n")
        if chosen is rich:
            renderer = _HtmlToText()
            renderer.feed(body)
            renderer.close()
            body, result.links = renderer.text(), renderer.links
            result.source = "text/html"
        else:
            result.source = "text/plain"
        body = "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in body)
        result.truncated = len(body) > limit
        result.text = body[:limit]
    return result


def _text_of(part: Message) -> str:
    payload = decoded_payload(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # an unknown charset: UTF-8 is the best guess
        return payload.decode("utf-8", errors="replace")


class _HtmlToText(HTMLParser):
    """HTML as plain text: blocks become lines, links become "text [address]", images their
    alt text; script, style and the like are dropped whole."""

    _DROP = frozenset(
        {
            "script",
            "style",
            "head",
            "title",
            "noscript",
            "template",
            "iframe",
            "object",
            "embed",
            "svg",
            "math",
        }
    )
    _BLOCK = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "table",
            "ul",
            "ol",
            "blockquote",
            "pre",
            "hr",
            "section",
            "article",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._dropping = 0
        self._href: str | None = None
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._DROP:
            self._dropping += 1
        elif self._dropping:
            return
        elif tag in self._BLOCK:
            self._out.append("\n")
        elif tag == "a":
            self._href = dict(attrs).get("href") or None
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._out.append(f"[image: {alt}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._DROP:
            self._dropping = max(0, self._dropping - 1)
        elif self._dropping:
            return
        elif tag == "a" and self._href:
            self._out.append(f" [{self._href}]")
            self.links.append(self._href)
            self._href = None
        elif tag in self._BLOCK:
            self._out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._dropping:
            self._out.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self._out).splitlines())
        text = "\n".join(lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip()
