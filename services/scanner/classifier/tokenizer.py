"""From a message to the set of tokens the classifier weighs.

Tokens are short strings with a prefix naming where they come from (``w:`` a body word,
``s:`` a subject word, ``u:`` a URL feature, ``h:`` header structure, ``m:`` MIME structure...).
They are hashed to feature indices by the model; the strings themselves are never stored.

The choice of tokens favours what generalises across sources and years: the header structure
(which headers, their order, their case, encodings and charsets, the Received hop count), the
MIME structure, URLs and their domains, and the words of the subject and the text (HTML reduced
to text). Values that only identify the collecting mailbox (Received hosts, Delivered-To, the
recipients' addresses) are reduced to counts or left out, and so are those that identify the
sender (From, Reply-To, Message-ID): measured across sources, they taught the model who sent
its training mail, not what spam looks like.

Headers added by filters on the way (``X-Spam-*``, ``X-Virus-*``, ``X-Moat-*``, ``X-Bogosity``,
``X-DSPAM-*``, and the like) are ignored entirely: they state someone else's verdict, and in
public corpora they leak the label.

Malformed input never raises: whatever cannot be decoded is skipped or reduced to a token.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from email.header import decode_header
from email.message import Message
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.scanner.checks.base import ParsedMessage

# Headers that carry another filter's verdict (or a trace of it): never used, never trusted.
IGNORED_HEADER = re.compile(
    r"^x-(spam|virus|moat|bogosity|dspam|antispam|anti-spam|antivirus|anti-virus|amavis"
    r"|mailscanner|barracuda|proofpoint|microsoft-antispam|forefront-antispam"
    r"|ms-exchange-organization-scl|ironport|crm114|razor|pyzor|quarantine|spamscore|policyd"
    r"|rspamd|sophos|mimecast|scanned|greylist|ham-report|asf|uce|junk|sa-|bayes|spamcop"
    r"|spamblock|filter|bitdefender|kaspersky|avast|mailcleaner|tmase|tm-as|symantec"
    r"|brightmail|vipre|cloudmark|zimbra-spam|gmx-antispam|pmx|purgate|mlf|eset|mdav"
    r"|checked-by|scanned-by|virus-scanned|clamav)",
    re.IGNORECASE,
)
# Trace headers: who carried the message to this mailbox. Only counted, never read.
TRACE_HEADERS = frozenset(
    {
        "received",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
        "return-path",
        "x-rcpt-to",
        "x-received",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "authentication-results",
        "received-spf",
        "x-originating-ip",
        "x-envelope-from",
        "status",
        "x-status",
        "x-keywords",
        "x-uid",
        "lines",
        "content-length",
        "x-ms-exchange-crosstenant-id",
    }
)
# Headers whose values are tokenised (lower-case names); the others give only their name.
MAX_HEADER_ORDER = 16  # header-order pairs taken from the first this many headers
MAX_WORD = 24  # longer "words" are reduced to a length token
MAX_URLS = 64

_WORD = re.compile(r"[^\W\d_][\w'$€£!-]*[\w$€£!]|[^\W\d_]", re.UNICODE)
_NUMBERISH = re.compile(r"[$€£]\s?\d[\d,.]*|\d[\d,.]*\s?%")
# (?i)(?:(?:https?|ftp)://|www\.)<url chars>, spelt so that every match starts with one of a
# set of characters: the regex engine then skips to those (4x faster on long text). The same
# matches (tests/unit/test_classifier.py); "\u017f" is the long s that (?i) takes for "s".
_URL = re.compile(
    r"""[hHfFwW](?:(?<=[hH])[tT][tT][pP][sS\u017f]?://|(?<=[fF])[tT][pP]://|(?<=[wW])[wW][wW]\.)"""
    r"""[^\s<>"'()\[\]{}\\^`|]{1,2000}"""
)
_HREF = re.compile(r"""\b(?:href|src|action)\s*=\s*["']?([^"'\s>]{1,2000})""", re.IGNORECASE)
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]{0,15})\b[^>]{0,4000}>")
_ANY_TAG = re.compile(r"<[^>]{0,4000}>")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_ADDRESS = re.compile(r"[\w.+=-]{1,64}@([\w-]{1,63}(?:\.[\w-]{1,63})+)", re.UNICODE)
_SHAPE_DIGITS = re.compile(r"\d+")
_SHAPE_LOWER = re.compile(r"[a-z]+")
_SHAPE_UPPER = re.compile(r"[A-Z]+")
_ENCODED_WORD = re.compile(r"=\?([^?]{1,40})\?([bBqQ])\?", re.ASCII)
_HTML_SIGNALS = (
    "img",
    "a",
    "form",
    "input",
    "script",
    "iframe",
    "table",
    "font",
    "map",
    "object",
    "embed",
    "base",
    "meta",
    "center",
)


def bucket(value: int) -> int:
    """A coarse logarithmic bucket: 0, 1, 2, 3-4, 5-8, 9-16, ..."""
    return max(0, value).bit_length()


def shape(text: str) -> str:
    """The shape of an identifier: digit runs D, lower-case runs a, upper-case runs A."""
    text = _SHAPE_DIGITS.sub("D", text[:64])
    text = _SHAPE_LOWER.sub("a", text)
    return _SHAPE_UPPER.sub("A", text)


def registered_domain(host: str) -> str:
    """The last two labels (three under a two-letter country second level, e.g. co.uk)."""
    labels = [label for label in host.lower().strip(".").split(".") if label]
    if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def decode_header_text(raw: str) -> str:
    """RFC 2047 encoded words decoded; on any error, the text as it came."""
    if "=?" not in raw:
        return raw
    try:
        pieces = []
        for data, charset in decode_header(raw):
            if isinstance(data, bytes):
                pieces.append(data.decode(_charset(charset), "replace"))
            else:
                pieces.append(data)
        return "".join(pieces)
    except Exception:
        return raw


def _charset(name: str | None) -> str:
    if not name:
        return "latin-1"
    name = name.strip().strip('"').lower()
    try:
        "".encode(name)
    except (LookupError, ValueError):
        return "latin-1"
    return name


def _words(text: str, prefix: str, out: set[str], limit: int = 20_000) -> None:
    # The first ``limit`` words, each distinct word handled once (the features are a set):
    # on long text most words repeat, and the per-word work is the classifier's main cost.
    for word in set(_WORD.findall(text)[:limit]):
        if len(word) > MAX_WORD:
            out.add(f"{prefix}long:{bucket(len(word))}")
            continue
        lower = word.lower()
        out.add(prefix + lower)
        if len(word) >= 3 and word.isupper():
            out.add(prefix + "CAPS:" + lower)
    for match in _NUMBERISH.finditer(text[:50_000]):
        money = match.group()
        kind = "pct" if money.endswith("%") else "money"
        out.add(f"{prefix}{kind}")


def url_tokens(url: str, out: set[str]) -> None:
    url = html.unescape(url.strip()).strip(".,;:!?")
    lower = url.lower()
    if lower.startswith("mailto:"):
        out.add("u:mailto")
        match = _ADDRESS.search(url)
        if match:
            out.add("u:mailto:" + registered_domain(match.group(1)))
        return
    scheme, sep, rest = lower.partition("://")
    if not sep:
        if not lower.startswith("www."):
            return
        scheme, rest = "none", lower
    out.add("u:scheme:" + scheme[:10])
    authority, _, path = rest.partition("/")
    if "@" in authority:
        out.add("u:userinfo")
        authority = authority.rpartition("@")[2]
    host, _, port = authority.partition(":")
    host = host.strip(".")
    if port:
        out.add("u:port")
    if not host:
        out.add("u:nohost")
        return
    if _IPV4.match(host):
        out.add("u:ip")
    elif host.startswith("["):
        out.add("u:ip6")
    else:
        if host.startswith("xn--") or ".xn--" in host:
            out.add("u:idn")
        labels = host.split(".")
        out.add("u:tld:" + labels[-1][:24])
        out.add("u:dom:" + registered_domain(host))
        out.add(f"u:labels:{min(len(labels), 6)}")
        if any(ch.isdigit() for ch in labels[0]):
            out.add("u:digits-host")
    if "?" in path:
        out.add("u:query")
    if "%" in path:
        out.add("u:escaped")
    if "=" in path and "@" in path:
        out.add("u:address-in-url")
    out.add(f"u:pathlen:{bucket(len(path) // 8)}")
    first = path.split("/", 1)[0].split("?", 1)[0]
    extension = first.rpartition(".")[2] if "." in first else ""
    if extension and extension.isalnum() and len(extension) <= 5:
        out.add("u:ext:" + extension)


def html_to_text(markup: str, out: set[str]) -> str:
    """The text a reader would see; tags noted as structure tokens on the way."""
    seen: dict[str, int] = {}
    for match in _TAG.finditer(markup[:500_000]):
        if match.group(1):
            continue
        name = match.group(2).lower()
        if name in _HTML_SIGNALS:
            seen[name] = seen.get(name, 0) + 1
        attributes = match.group(0).lower()
        if name == "font" and "color" in attributes:
            out.add("html:font-color")
        if "display:none" in attributes.replace(" ", "") or "visibility:hidden" in attributes:
            out.add("html:hidden")
        if name in ("td", "table", "div", "p", "span") and "bgcolor" in attributes:
            out.add("html:bgcolor")
    for name, count in seen.items():
        out.add(f"html:{name}:{min(bucket(count), 4)}")
    for match in _HREF.finditer(markup[:500_000]):
        url_tokens(match.group(1), out)
    text = _SCRIPT_STYLE.sub(" ", markup)
    text = _COMMENT.sub(" ", text)
    if "<!--" in markup:
        out.add("html:comment")
    text = _ANY_TAG.sub(" ", text)
    return html.unescape(text)


def raw_header(part: Message, name: str) -> str:
    """A header's value as it came (the modern policy's parsing is slow, and can fail)."""
    for key, value in part.raw_items():
        if isinstance(key, str) and key.lower() == name:
            return value if isinstance(value, str) else str(value)
    return ""


_CHARSET = re.compile(r'charset\s*=\s*"?([\w.:-]{1,40})', re.IGNORECASE)


def part_charset(part: Message) -> str | None:
    match = _CHARSET.search(raw_header(part, "content-type"))
    return match.group(1).lower() if match else None


def part_text(part: Message, payload: bytes) -> str:
    return payload.decode(_charset(part_charset(part)), "replace")


def header_tokens(message: Message, out: set[str]) -> None:
    try:
        items = list(message.raw_items())
    except Exception:
        items = []
    order: list[str] = []
    names: set[str] = set()
    for name, value in items:
        if not isinstance(name, str):
            continue
        lower = name.lower()
        if IGNORED_HEADER.match(lower):
            continue
        names.add(lower)
        value = str(value) if not isinstance(value, str) else value
        if lower in TRACE_HEADERS:
            continue
        if lower.startswith("list-") or lower in ("mailing-list", "x-mailing-list"):
            out.add("h:list")
        if lower.startswith("x-") and lower not in _X_KNOWN:
            out.add("h:x-other")
        out.add("h:" + lower[:40])
        if name != name.title() and name not in _CANONICAL_CASE:
            out.add("hc:" + name[:40])
        if len(order) < MAX_HEADER_ORDER:
            order.append(lower[:40])
        for encoding in _ENCODED_WORD.finditer(value):
            out.add(f"he:{encoding.group(1).lower()}:{encoding.group(2).lower()}")
        if not value.isascii():
            out.add("h:8bit")
        handler = _VALUE_TOKENS.get(lower)
        if handler is not None:
            handler(decode_header_text(value), out)
    # No hop count and no header count (until 2026-12-07 they were tokens): both say more about
    # the path to the collecting mailbox than about the mail, and without them the AUC and the
    # recall at 0.5% FPR rose on every held-out split (bench/results/rank-features.md).
    for first, second in pairwise(order):
        out.add(f"ho:{first}>{second}")
    if "message-id" not in names:
        out.add("h:no-message-id")


def _subject(value: str, out: set[str]) -> None:
    _words(value, "s:", out, 60)
    letters = [ch for ch in value if ch.isalpha()]
    if len(letters) >= 6 and sum(ch.isupper() for ch in letters) / len(letters) > 0.7:
        out.add("s:shouting")
    if "!" in value:
        out.add("s:bang")
    if re.search(r"\s{3,}\S+$", value):
        out.add("s:padded-tag")
    if not value.isascii():
        out.add("s:nonascii")
    if not value.strip():
        out.add("s:empty")


def _content_type(value: str, out: set[str]) -> None:
    lower = value.lower()
    out.add("ct:" + lower.split(";", 1)[0].strip()[:40])
    match = re.search(r'charset\s*=\s*"?([\w.:-]{1,30})', lower)
    if match:
        out.add("ct:charset:" + match.group(1))
    match = re.search(r'boundary\s*=\s*"?([^";]{1,70})', value, re.IGNORECASE)
    if match:
        out.add("ct:boundary:" + shape(match.group(1))[:24])


def _mailer(value: str, out: set[str]) -> None:
    words = _SHAPE_DIGITS.sub("", value.lower()).split()
    if words:
        out.add("xm:" + words[0][:30])
        out.add("xm:" + " ".join(words[:3])[:60])


def _simple(prefix: str) -> Callable[[str, set[str]], None]:
    def handler(value: str, out: set[str]) -> None:
        out.add(prefix + value.strip().lower()[:30])

    return handler


def _date(value: str, out: set[str]) -> None:
    # The zone is not a token (the sender's locale, or a corpus's collecting clock): see the
    # hop count in header_tokens.
    value = value.strip()
    if not re.match(r"[A-Z][a-z]{2},", value):
        out.add("d:no-weekday")


def _recipients(value: str, out: set[str]) -> None:
    count = len(_ADDRESS.findall(value))
    out.add(f"to:count:{min(bucket(count), 4)}")
    if count == 0:
        out.add("to:none")
    if "undisclosed" in value.lower():
        out.add("to:undisclosed")


# No tokens from the From, Reply-To and Message-ID values (the sender's domain, display name,
# address and Message-ID shapes): they name the senders of the training corpora, and on mail
# from other sources they misled the model (bench/detection_eval.py: without them the AUC rose
# on every held-out split; docs/classifier.md). Who the sender is, is the reputation and
# authentication checks' business. The headers' presence and order still count.
_VALUE_TOKENS: dict[str, Callable[[str, set[str]], None]] = {
    "subject": _subject,
    "content-type": _content_type,
    "x-mailer": _mailer,
    "user-agent": _mailer,
    "x-priority": _simple("prio:"),
    "x-msmail-priority": _simple("msprio:"),
    "importance": _simple("imp:"),
    "precedence": _simple("prec:"),
    "content-transfer-encoding": _simple("cte:"),
    "mime-version": _simple("mv:"),
    "date": _date,
    "to": _recipients,
    "cc": _recipients,
}
_X_KNOWN = frozenset({"x-mailer", "x-priority", "x-msmail-priority", "x-mimeole"})
_CANONICAL_CASE = frozenset({"Message-ID", "MIME-Version", "X-MSMail-Priority", "X-MimeOLE"})


def body_tokens(message: ParsedMessage, out: set[str], max_text: int) -> None:
    budget = max_text
    structure: list[str] = []
    html_only = True
    for part in message.parts:
        content_type = part.content_type
        structure.append(content_type)
        out.add("m:" + content_type[:50])
        cte = raw_header(part.part, "content-transfer-encoding").strip().lower()
        if cte:
            out.add(f"m:cte:{content_type.split('/', 1)[0]}:{cte[:20]}")
        charset = part_charset(part.part)
        if charset:
            out.add("m:charset:" + charset[:30])
        if part.filename:
            extension = part.filename.rpartition(".")[2].lower() if "." in part.filename else ""
            out.add("m:att:" + (extension[:8] or "noext"))
        if content_type == "text/plain":
            html_only = False
        if not content_type.startswith("text/") or budget <= 0:
            continue
        text = part_text(part.part, part.payload[:budget])
        budget -= len(part.payload)
        if content_type == "text/html":
            out.add(f"m:html-size:{min(bucket(len(text) // 256), 8)}")
            text = html_to_text(text, out)
        else:
            for url in _URL.findall(text[:200_000])[:MAX_URLS]:
                url_tokens(url, out)
        out.add(f"m:text-size:{min(bucket(len(text) // 256), 8)}")
        _words(text, "w:", out)
    if html_only and "text/html" in structure:
        out.add("m:html-only")
    out.add("m:parts:" + str(min(len(structure), 8)))
    top_header = raw_header(message.message, "content-type")
    top = top_header.split(";", 1)[0].strip().lower() or "text/plain"
    out.add("m:top:" + top[:40])
    defects = list(getattr(message.message, "defects", ()))
    for part in message.parts:
        defects.extend(getattr(part.part, "defects", ()))
    for defect in defects[:20]:
        out.add("m:defect:" + type(defect).__name__)


def tokens(message: ParsedMessage, max_text: int = 200_000) -> set[str]:
    """Every token of a message (a set: the model weighs presence, not counts)."""
    out: set[str] = {"bias"}
    try:
        header_tokens(message.message, out)
    except Exception:  # a header the parser itself cannot present: note it and go on
        out.add("h:unreadable")
    try:
        body_tokens(message, out, max_text)
    except Exception:
        out.add("m:unreadable")
    return out
