"""URLs in a message's body, for the checks that judge them (rules, blocklists, a classifier).

``extract_urls(message)`` finds the links of the text/plain and text/html body parts: ``href``,
``src`` and form ``action`` attributes in HTML, and ``http(s)://`` or ``www.`` strings in any
text. Each comes back with its host normalised the way a browser would see it: lower case,
percent-escapes undone, IDNA (``xn--``) labels decoded to Unicode, NFKC-folded, no trailing dot,
and flagged when it is an IP literal (dotted, IPv6, or the decimal/hex forms browsers accept).
``registrable_domain(host)`` is the part a registrant owns (Public Suffix List).

Nothing here raises on malformed input: a link that cannot be parsed is skipped. The work is
plain CPU (a regex and an HTML parser); callers run it in a thread for big messages.
"""

from __future__ import annotations

import codecs
import contextlib
import ipaddress
import re
import socket
import unicodedata
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

from publicsuffixlist import PublicSuffixList

from services.scanner.checks.base import ParsedMessage, Part

# A body part is read up to this many characters: enough for any real letter, and a bound on
# the work a hostile message can cause.
MAX_TEXT_CHARS = 1_000_000
# HTML is parsed up to this many characters (Python's parser does about 1 MB/s on hostile markup).
MAX_HTML_CHARS = 256 * 1024
MAX_URL_CHARS = 2048
# Messages up to this size without HTML are read inline; others in a thread (``is_cheap``).
INLINE_LIMIT = 4096

_URL_CHARS = r"""[^\s<>"'`{}|\\^\[\]\x00-\x1f]"""
# (?i)\b(?:https?://\[<IPv6>\]<url chars>*|(?:https?://|www\.)<url chars>+), spelt so that
# every match starts with one of a set of characters: the regex engine then skips to those (4x
# faster on long text). The same matches (tests/unit/test_rules.py); "\u017f" is the long s
# that (?i) takes for "s"; (?<!\w.) is the \b before a word character.
_TEXT_URL = re.compile(
    rf"[hHwW](?<!\w[hHwW])(?:(?<=[hH])[tT][tT][pP][sS\u017f]?://"
    rf"(?:\[[0-9a-fA-F:.%]{{2,64}}\]{_URL_CHARS}*|{_URL_CHARS}+)|(?<=[wW])[wW][wW]\.{_URL_CHARS}+)"
)
_CHARSET = re.compile(r"""(?i)\bcharset\s*=\s*["']?([a-z0-9_.:+-]{1,40})""")
_TRAILING = ".,;:!?)]}'\"*>"
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|\d+)(?:\.(?:0x[0-9a-f]*|\d+)){0,3}")
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})  # UTS #46 full stops
_LINK_ATTRIBUTES = {
    "a": "href",
    "area": "href",
    "form": "action",
    "img": "src",
    "iframe": "src",
    "frame": "src",
}


@dataclass(frozen=True)
class Url:
    """One link: the text as found, and its normalised host ("" when it has none)."""

    url: str
    host: str
    is_ip: bool


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package: no network


def preload() -> None:
    """Load the Public Suffix List now (about 0.1 s), not on the first message."""
    _psl()


def is_cheap(message: ParsedMessage) -> bool:
    """Whether reading this message's body takes well under a millisecond: small and without
    HTML. Other messages are better read in a thread than on the event loop."""
    return len(message.raw) <= INLINE_LIMIT and all(
        part.content_type != "text/html" for part in message.parts
    )


def registrable_domain(host: str) -> str | None:
    """The registrable domain of a normalised host (``mail.example.co.uk`` →
    ``example.co.uk``); ``None`` for an IP literal, a bare suffix or garbage."""
    host = host.rstrip(".")
    if "." not in host or ".." in host or host.startswith(".") or is_ip_literal(host):
        return None
    try:
        return _psl().privatesuffix(host)
    except Exception:  # the library's own parse of something odd
        return None


def public_suffix(host: str) -> str | None:
    try:
        return _psl().publicsuffix(host)
    except Exception:
        return None


def decode_host(host: str) -> str:
    """A host as a browser resolves it: percent-escapes undone, IDNA labels decoded, NFKC and
    lower case, Unicode full stops as dots, no trailing dot."""
    host = unquote(host).translate(_DOTS)
    host = unicodedata.normalize("NFKC", host).lower().strip().rstrip(".")
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(Exception):  # not valid punycode: keep it as it came
                label = codecs.decode(label[4:].encode("ascii"), "punycode").lower()
        labels.append(label)
    return ".".join(labels)


def is_ip_literal(host: str) -> bool:
    """Dotted IPv4, IPv6, and the legacy forms browsers still resolve (``3221225985``,
    ``0xc0.0.2.1``, ``192.0x00.2.1``)."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host) is None:
        return False
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def parse_url(text: str) -> Url | None:
    """A ``Url`` for one link, or ``None`` when it is no web link (mailto:, cid:, fragments,
    relative paths) or cannot be parsed."""
    text = text.strip()[:MAX_URL_CHARS]
    if not text:
        return None
    if text[:4].lower() == "www.":
        text = "http://" + text
    lowered = text[:8].lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        return None
    # Browsers read backslashes as slashes in web URLs: http://evil.test\@moat.test/
    try:
        host = urlsplit(text.replace("\\", "/")).hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if not host:
        return None
    host = decode_host(host)
    return Url(text, host, is_ip_literal(host))


def urls_in_text(text: str) -> list[str]:
    """``http(s)://`` and ``www.`` strings in free text, trailing punctuation removed."""
    return [match.group(0).rstrip(_TRAILING) for match in _TEXT_URL.finditer(text)]


def raw_header(part: Part, name: str) -> str:
    """A part's header as sent, unparsed: the library's structured parse of a hostile header
    (thousands of parameters) can take seconds, and the checks need only a token of it."""
    wanted = name.lower()
    try:
        for key, value in part.part.raw_items():
            if key.lower() == wanted:
                return str(value)
    except Exception:
        pass
    return ""


def part_text(part: Part) -> str:
    """A text part's payload as text, in its declared charset when Python knows it."""
    payload = part.payload[: MAX_TEXT_CHARS * 4]
    match = _CHARSET.search(raw_header(part, "Content-Type"))
    charset = match.group(1) if match else "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:  # an unknown charset: UTF-8 reads ASCII and most of the rest
        charset = "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except Exception:  # a codec that fails on its own terms
        text = payload.decode("utf-8", "replace")
    return text[:MAX_TEXT_CHARS]


def is_attachment(part: Part) -> bool:
    disposition = raw_header(part, "Content-Disposition")
    return disposition.split(";", 1)[0].strip().lower() == "attachment"


def body_parts(message: ParsedMessage) -> list[tuple[str, str]]:
    """The readable body: ``(content type, text)`` of every text/plain and text/html part that
    is not an attachment."""
    return [
        (part.content_type, part_text(part))
        for part in message.parts
        if part.content_type in ("text/plain", "text/html") and not is_attachment(part)
    ]


class LinkCollector(HTMLParser):
    """Links of an HTML document: link attributes, and URLs written in its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = _LINK_ATTRIBUTES.get(tag)
        if wanted is None:
            return
        for name, value in attrs:
            if name == wanted and value:
                self.links.append(value)

    def handle_data(self, data: str) -> None:
        if "www." in data or "://" in data:
            self.links.extend(urls_in_text(data))


def feed_html(parser: HTMLParser, html: str) -> None:
    """Feed a document to a parser; malformed markup ends the parse, never the caller."""
    try:
        parser.feed(html[:MAX_HTML_CHARS])
        parser.close()
    except Exception:  # html.parser is lenient, but asserts on a few broken declarations
        pass


def links_of(content_type: str, text: str) -> list[str]:
    if content_type == "text/html":
        collector = LinkCollector()
        feed_html(collector, text)
        return collector.links
    return urls_in_text(text)


def unique_urls(links: list[str], limit: int) -> list[Url]:
    """Parse links, dropping duplicates and non-web ones, keeping at most ``limit``."""
    seen: set[str] = set()
    urls: list[Url] = []
    for link in links:
        if link in seen:
            continue
        seen.add(link)
        url = parse_url(link)
        if url is not None:
            urls.append(url)
            if len(urls) >= limit:
                break
    return urls


def extract_urls(message: ParsedMessage, limit: int = 500) -> list[Url]:
    """The web links of a message's body, first seen first, at most ``limit``."""
    links: list[str] = []
    for content_type, text in body_parts(message):
        links.extend(links_of(content_type, text))
    return unique_urls(links, limit)


def url_domains(urls: list[Url]) -> list[str]:
    """The distinct registrable domains of the links (IP literals left out), in order."""
    domains: dict[str, None] = {}
    for url in urls:
        if not url.is_ip:
            domain = registrable_domain(url.host)
            if domain:
                domains[domain] = None
    return list(domains)
