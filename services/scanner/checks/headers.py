"""Header and content heuristics: signs of forged, careless or deceptive mail, each a symbol with
a score from the symbol table (moat/symbols.py, ``scanner.symbols``) (docs/checks/rules.md).

- Date: missing, unparsable, far in the future or the past of the message's arrival (the date
  of the topmost ``Received:``, which is our own ingress's; now when there is none).
- Message-ID: missing or not ``<left@right>``.
- From/Reply-To in different registrable domains; a protected domain in From's display name
  while the address is elsewhere.
- HTML without a text alternative; HTML with hidden text (display:none, visibility:hidden,
  tiny fonts, text the colour of its background).
- Links through URL shorteners or to IP literals.
- Lookalikes of the protected domains in From, Reply-To and links: a small edit distance on the
  registrable label, or the same confusable skeleton (UTS #39 data via confusable-homoglyphs,
  NFKC, and the ASCII look-alikes rn→m, vv→w, 0→o, 1→l, I→l); combosquats: the protected name
  with other words (example-login, secure-example, examplesupport) or the whole protected
  domain inside another one (login.example.test.evil.test).

Headers that other filters add (``X-Spam-*``, ``X-Virus-*``, ``X-Moat-*``, ...) are never read:
a sender can write any of them. Malformed input yields a finding or nothing, never an error.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from functools import cache

from confusable_homoglyphs import confusables  # type: ignore[import-untyped]

from moat.model import Finding
from moat.settings import RulesSettings, Settings
from services.scanner.checks.base import ParsedMessage
from services.scanner.checks.urls import (
    LinkCollector,
    Url,
    body_parts,
    decode_host,
    feed_html,
    is_attachment,
    is_cheap,
    preload,
    public_suffix,
    raw_header,
    registrable_domain,
    unique_urls,
    urls_in_text,
)

_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
_ANGLE = re.compile(r"<([^<>@\s]{1,200})>")
_AT_HOST = re.compile(r"@([a-zA-Z0-9.-]{1,200})")
_CAPS_MIN_LETTERS = 10  # SUBJ_ALL_CAPS: fewer capitals are an acronym or two, not shouting
_SKIPPED_TAGS = frozenset({"style", "script", "head", "title", "noscript", "template"})
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_SELF_CLOSING = frozenset({"p", "li", "td", "th", "tr", "option", "dt", "dd"})
_MAX_DEPTH = 512
_NAMED_COLOURS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "silver": (192, 192, 192),
    "navy": (0, 0, 128),
    "snow": (255, 250, 250),
    "ivory": (255, 255, 240),
    "whitesmoke": (245, 245, 245),
}
_HEX_COLOUR = re.compile(r"#?([0-9a-f]{6}|[0-9a-f]{3})")
_RGB_COLOUR = re.compile(r"rgba?\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})")
# Characters that are invisible wherever they are (white space, and the zero-width and
# formatting characters that pad a preheader so that a client's preview shows nothing after it):
# not text a reader could see, so neither hidden nor visible text.
_INVISIBLE = re.compile(
    "[\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u206a-\u206f\u2800\u3164\ufeff\uffa0]+"
)
_FONT_SIZE = re.compile(r"(\d*\.?\d+)\s*(px|pt|em|rem|%)?")
# Unicode's confusables.txt as the library ships it: character → what it can be taken for.
_CONFUSABLES: dict[str, list[dict[str, str]]] = confusables.confusables_data
_ASCII_LOOKALIKES = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"))
COMBOSQUAT = "COMBOSQUAT_DOMAIN"

Colour = tuple[int, int, int]


# --- headers ------------------------------------------------------------------------------------


def _text(value: str) -> str:
    """A raw header value as text: 8-bit bytes (kept as surrogates by the parser) read as UTF-8."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _headers(message: ParsedMessage, name: str) -> list[str]:
    """The raw values of a header, unparsed (the parser's own parse can raise on odd input)."""
    wanted = name.lower()
    try:
        return [_text(str(v)) for k, v in message.message.raw_items() if k.lower() == wanted]
    except Exception:
        return []


def _decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded; the text as it was when they are broken."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of address headers; broken ones leave out what is broken."""
    try:
        pairs = getaddresses(values)
    except Exception:
        return []
    return [(_decode_words(name), address) for name, address in pairs if "@" in address]


def _domain_of(address: str) -> str:
    return decode_host(address.rpartition("@")[2].strip().strip("[]>"))


def _list_domains(message: ParsedMessage) -> set[str]:
    """Registrable domains of the mailing list the message came through (List-Id, List-Post,
    Mailing-List, Sender): lists set Reply-To to themselves, which is no sign of deceit."""
    hosts: list[str] = []
    for value in _headers(message, "List-Id"):
        hosts.extend(_ANGLE.findall(value))
    for name in ("List-Post", "Mailing-List", "Sender"):
        for value in _headers(message, name):
            hosts.extend(_AT_HOST.findall(value))
    domains = {registrable_domain(decode_host(host)) for host in hosts[:20]}
    return {domain for domain in domains if domain}


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value.strip())
    except Exception:  # ValueError, TypeError, IndexError, OverflowError: all "unparsable"
        return None
    if parsed.tzinfo is None:  # "-0000": UTC, its origin unknown
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _arrival(message: ParsedMessage) -> datetime:
    """When the message arrived: the date of the topmost Received (ours), or now."""
    received = _headers(message, "Received")
    if received:
        _, sep, date = received[0].rpartition(";")
        parsed = _parse_date(date) if sep else None
        if parsed is not None:
            return parsed
    return datetime.now(UTC)


# --- lookalikes ---------------------------------------------------------------------------------


@cache
def _prototype(char: str) -> str:
    """The ASCII letter or digit a character is confusable with (UTS #39 data), else itself."""
    for entry in _CONFUSABLES.get(char, ()):
        glyph = entry["c"]
        if glyph.isascii() and glyph.isalnum():
            return glyph.lower()
    return char


def skeleton(text: str) -> str:
    """What a name looks like, so that look-alike names compare equal: NFKC, capital I as l,
    lower case, each confusable character as its ASCII prototype, then rn→m, vv→w, 0→o, 1→l."""
    text = unicodedata.normalize("NFKC", text).replace("I", "l").lower()
    text = "".join(c if c.isascii() else _prototype(c) for c in text)
    for seq, letter in _ASCII_LOOKALIKES:
        text = text.replace(seq, letter)
    return text


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (a swap of neighbours counts one), or ``limit + 1``
    as soon as it is known to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


@dataclass(frozen=True)
class Domain:
    """A registrable domain split once for the comparisons: ``mail.moat.test`` → ``moat.test``,
    label ``moat``, suffix ``test``, its skeleton and its label's (``name``)."""

    domain: str
    label: str
    suffix: str
    skeleton: str
    name: str

    @classmethod
    def of(cls, host: str) -> Domain | None:
        registrable = registrable_domain(decode_host(host))
        suffix = public_suffix(registrable) if registrable else None
        if not registrable or not suffix or len(suffix) >= len(registrable):
            return None
        label = registrable[: -len(suffix) - 1]
        return cls(registrable, label, suffix, skeleton(registrable), skeleton(label))


def lookalike(candidate: Domain, protected: Domain, rules: RulesSettings) -> str | None:
    """``HOMOGRAPH_DOMAIN`` or ``LOOKALIKE_DOMAIN`` when ``candidate`` imitates ``protected``."""
    if candidate.domain == protected.domain:
        return None
    if candidate.skeleton == protected.skeleton:
        return "HOMOGRAPH_DOMAIN"
    if candidate.suffix != protected.suffix or len(protected.label) < rules.lookalike_min_length:
        return None
    limit = (
        rules.lookalike_long_distance
        if len(protected.label) >= rules.lookalike_long_length
        else rules.lookalike_distance
    )
    distance = edit_distance(candidate.label, protected.label, limit)
    if distance > 1 and protected.label in candidate.label:
        return None  # the name whole with more around it (onmicrosoft.com): no typo
    if 0 < distance <= limit:
        return "LOOKALIKE_DOMAIN"
    return None


def _distance_limit(label: str, rules: RulesSettings) -> int:
    if len(label) >= rules.lookalike_long_length:
        return rules.lookalike_long_distance
    return rules.lookalike_distance


def combosquat(candidate: Domain, protected: Domain, rules: RulesSettings) -> bool:
    """Whether ``candidate``'s registrable label joins ``protected``'s name (or what looks like
    it) to other words: ``example-login``, ``secure-example``, ``examp1e-billing``,
    ``exmaple-support`` — at hyphens; glued to other letters (``examplesupport``) only when the
    name is at least ``combosquat_glued_length`` long, so ``gmail`` holds no ``mail``. Compared
    on skeletons; names under ``combosquat_min_length`` are never looked for."""
    brand, label, size = protected.name, candidate.name, len(protected.label)
    if size < rules.combosquat_min_length or label == brand:  # the name alone is no combination
        return False
    start = label.find(brand)
    while start >= 0:
        end = start + len(brand)
        left = label[:start].rpartition("-")[2]  # letters glued to the name on either side
        right = label[end:].partition("-")[0]
        if not left and not right:
            return True  # whole, at hyphens, with other words (label != brand): example-login
        if size >= rules.combosquat_glued_length and len(left + right) >= 2:
            return True  # glued, and more than a plural or a typo: examplesupport
        start = label.find(brand, start + 1)
    if "-" not in label or size < rules.lookalike_min_length:
        return False  # a typo of the name alone is LOOKALIKE_DOMAIN's business
    limit = _distance_limit(protected.label, rules)
    parts = label.split("-")
    width = brand.count("-") + 1  # a protected name may have hyphens of its own
    for i in range(len(parts) - width + 1):
        words = "-".join(parts[i : i + width])
        if abs(len(words) - len(brand)) > limit or not any(parts[:i] + parts[i + width :]):
            continue
        if 0 < edit_distance(words, brand, limit) <= limit:
            return True  # a typo of the name, and other words: exmaple-login
    return False


def names_pattern(protected: tuple[Domain, ...]) -> re.Pattern[str] | None:
    """One expression for the protected domains' skeletons as whole labels followed by more
    (``example.test.`` or ``example.test-``), the longest first; ``None`` without any."""
    if not protected:
        return None
    names = sorted({re.escape(p.skeleton) for p in protected}, key=len, reverse=True)
    return re.compile(rf"(?<![^.-])(?:{'|'.join(names)})(?=[.-])")


def name_inside(host: str, candidate: Domain, names: re.Pattern[str]) -> str | None:
    """The skeleton of the protected domain that ``host`` carries whole in front of its own
    registrable domain ``candidate`` (``login.example.test.evil.test``,
    ``example.test-verify.info``), else ``None``. ``example.com.au`` for ``example.com`` (the
    name under another suffix) is its own registrable domain and does not count."""
    whole = skeleton(host)
    if not whole.endswith("." + candidate.skeleton):
        return None
    match = names.search(whole)
    if match is None or match.start() >= len(whole) - len(candidate.skeleton):
        return None
    return match.group()


@cache
def _normalised(domains: tuple[str, ...]) -> frozenset[str]:
    return frozenset(decode_host(domain) for domain in domains)


def _in_domain(domain: str, parent: str) -> bool:
    return domain == parent or domain.endswith("." + parent)


def _parents(host: str) -> list[str]:
    """``a.b.test`` → ``a.b.test``, ``b.test``, ``test``."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


# --- HTML -----------------------------------------------------------------------------------


def parse_colour(value: str | None) -> Colour | None:
    if not value:
        return None
    value = value.strip().lower()
    if value in _NAMED_COLOURS:
        return _NAMED_COLOURS[value]
    match = _RGB_COLOUR.match(value)
    if match:
        r, g, b = (min(int(x), 255) for x in match.groups())
        return (r, g, b)
    match = _HEX_COLOUR.fullmatch(value)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(d * 2 for d in digits)
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    return None


def _font_px(value: str) -> float | None:
    match = _FONT_SIZE.match(value.strip())
    if not match:
        return None
    number = float(match.group(1))
    unit = match.group(2) or "px"
    return {"px": number, "pt": number * 4 / 3, "em": number * 16, "rem": number * 16}.get(
        unit, number * 16 / 100
    )


def _style(value: str | None) -> dict[str, str]:
    declarations: dict[str, str] = {}
    for item in (value or "").lower().split(";"):
        name, sep, val = item.partition(":")
        if sep:
            declarations[name.strip()] = val.replace("!important", "").strip()
    return declarations


@dataclass
class _Element:
    tag: str
    hidden: bool = False
    tiny: bool = False  # its font size is at most ``tiny_font_px`` (its own, or inherited)
    skipped: bool = False
    colour: Colour | None = None
    background: Colour | None = (255, 255, 255)  # None: an image, whose colours are unknown


@dataclass
class _HtmlFacts:
    visible: int = 0
    hidden: int = 0
    sample: list[str] = field(default_factory=list)


class HtmlInspector(LinkCollector):
    """Links, and how much of the text a reader cannot see: display:none, visibility:hidden,
    opacity 0, tiny fonts, or a colour (too) close to the background (inline styles and the
    legacy ``color``/``bgcolor`` attributes; stylesheets are not evaluated)."""

    def __init__(self, rules: RulesSettings) -> None:
        super().__init__()
        self.rules = rules
        self.stack: list[_Element] = [_Element("#root")]
        self.facts = _HtmlFacts()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        if tag in _VOID_TAGS:
            return
        if tag in _SELF_CLOSING and self.stack[-1].tag == tag:
            self.stack.pop()
        if len(self.stack) >= _MAX_DEPTH:
            return
        parent = self.stack[-1]
        attributes = dict(attrs)
        style = _style(attributes.get("style"))
        element = _Element(
            tag,
            hidden=parent.hidden or self._hides(style, attributes),
            tiny=self._tiny(style.get("font-size"), parent.tiny),
            skipped=parent.skipped or tag in _SKIPPED_TAGS,
            colour=parse_colour(style.get("color") or attributes.get("color")) or parent.colour,
            background=self._background(style, attributes, parent.background),
        )
        self.stack.append(element)

    def _hides(self, style: dict[str, str], attributes: dict[str, str | None]) -> bool:
        if "hidden" in attributes:
            return True
        if style.get("display") == "none" or style.get("visibility") == "hidden":
            return True
        return style.get("opacity", "").strip() in ("0", "0.0", "0%")

    def _tiny(self, size: str | None, inherited: bool) -> bool:
        """Whether text in the element is too small to read. Unlike display:none or opacity
        0, a font size is overridden by a child's own: layouts generated by MJML and the like
        set ``font-size:0`` on wrappers (against gaps between inline blocks) and size the text
        inside, which is visible. A size relative to the parent's (em, %) stays tiny."""
        if size is None:
            return inherited
        size = size.strip()
        if inherited and size.endswith(("em", "%")) and not size.endswith("rem"):
            return True
        px = _font_px(size)
        return inherited if px is None else px <= self.rules.tiny_font_px

    @staticmethod
    def _background(
        style: dict[str, str], attributes: dict[str, str | None], inherited: Colour | None
    ) -> Colour | None:
        """The element's background colour; ``None`` (unknown) over a background image."""
        if attributes.get("background") or "url(" in style.get("background", "") + style.get(
            "background-image", ""
        ):
            return None
        colour = parse_colour(style.get("background-color"))
        if colour is None and "background" in style:
            for token in style["background"].split():
                colour = parse_colour(token)
                if colour is not None:
                    break
        return colour or parse_colour(attributes.get("bgcolor")) or inherited

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        super().handle_data(data)
        element = self.stack[-1]
        if element.skipped:
            return
        chars = len(_INVISIBLE.sub("", data))
        if not chars:
            return
        if element.hidden or element.tiny or self._same_colour(element):
            self.facts.hidden += chars
            if len(self.facts.sample) < 3:
                self.facts.sample.append(" ".join(data.split())[:40])
        else:
            self.facts.visible += chars

    def _same_colour(self, element: _Element) -> bool:
        if element.colour is None or element.background is None:
            return False
        limit = self.rules.same_colour_distance
        return all(
            abs(a - b) <= limit for a, b in zip(element.colour, element.background, strict=True)
        )


# --- the check ------------------------------------------------------------------------------


class HeaderRulesCheck:
    """The header and content heuristics (symbols and scores in ``scanner.rules``)."""

    name = "headers"

    def __init__(self, settings: Settings) -> None:
        protected = (Domain.of(domain) for domain in settings.domains)
        self.protected = tuple({p.domain: p for p in protected if p is not None}.values())
        self.own = frozenset(p.domain for p in self.protected)
        self.names = names_pattern(self.protected)
        self.by_skeleton = {p.skeleton: p for p in reversed(self.protected)}
        preload()

    async def check(self, message: ParsedMessage) -> list[Finding]:
        if is_cheap(message):
            return self.findings(message)
        return await asyncio.to_thread(self.findings, message)

    def findings(self, message: ParsedMessage) -> list[Finding]:
        rules = message.policy.rules
        hits: dict[str, str] = {}
        self._date(message, rules, hits)
        self._message_id(message, hits)
        self._addresses(message, hits)
        self._subject(message, hits)
        self._base64_text(message, hits)
        self._list(message, hits)
        urls = self._body(message, rules, hits)
        self._links(urls, rules, hits)
        table = message.policy.symbol_table
        # A heuristic scored 0 in the table is off: not even recorded.
        return [
            table.finding(self.name, symbol, detail[:200])
            for symbol, detail in hits.items()
            if table.symbols[symbol].score != 0.0 or table.symbols[symbol].action is not None
        ]

    @staticmethod
    def _date(message: ParsedMessage, rules: RulesSettings, hits: dict[str, str]) -> None:
        dates = _headers(message, "Date")
        if not dates:
            hits["MISSING_DATE"] = "no Date header"
            return
        date = _parse_date(dates[0])
        if date is None:
            hits["INVALID_DATE"] = f"Date: {dates[0].strip()[:60]}"
            return
        arrival = _arrival(message)
        try:
            ahead = date - arrival
        except OverflowError:
            return
        if ahead > timedelta(hours=rules.date_future_hours):
            hits["DATE_IN_FUTURE"] = f"Date {ahead.total_seconds() / 3600:.0f} h after arrival"
        elif -ahead > timedelta(days=rules.date_past_days):
            hits["DATE_IN_PAST"] = f"Date {-ahead.days} days before arrival"

    @staticmethod
    def _message_id(message: ParsedMessage, hits: dict[str, str]) -> None:
        ids = _headers(message, "Message-ID")
        if not ids or not ids[0].strip():
            hits["MISSING_MESSAGE_ID"] = "no Message-ID header"
        elif _MESSAGE_ID.fullmatch(ids[0].strip()) is None:
            hits["INVALID_MESSAGE_ID"] = f"Message-ID: {ids[0].strip()[:60]}"

    @staticmethod
    def _subject(message: ParsedMessage, hits: dict[str, str]) -> None:
        """A Subject shouted in capitals (SpamAssassin's SUBJ_ALL_CAPS): at least three words
        and ten capital letters, no lower-case letter and no letter of a script without case."""
        subjects = _headers(message, "Subject")
        if not subjects:
            return
        # Unlike SpamAssassin, a "Re:" prefix is not stripped: a list's replies to a capitals
        # subject keep their lower-case "e" (stripping it: 0.8% of the lists' ham, not 0.2%).
        subject = _decode_words(subjects[0]).strip()
        if len(subject.split()) < 3:
            return
        cased = 0
        for char in subject:
            if char.islower():
                return
            if char.isupper():
                cased += 1
            elif char.isalpha():
                return  # a script without case (CJK, Arabic...): its acronyms are no shout
        if cased >= _CAPS_MIN_LETTERS:
            hits["SUBJ_ALL_CAPS"] = subject[:80]

    @staticmethod
    def _base64_text(message: ParsedMessage, hits: dict[str, str]) -> None:
        """A text body part sent in base64 although it is plain ASCII (Rspamd's
        MIME_BASE64_TEXT): mail programs use quoted-printable or 7bit for that; base64 hides
        the words from filters that do not decode."""
        for part in message.parts:
            if part.content_type not in ("text/plain", "text/html") or is_attachment(part):
                continue
            encoding = raw_header(part, "Content-Transfer-Encoding").strip().lower()
            if encoding == "base64" and len(part.payload) >= 20 and part.payload.isascii():
                hits["MIME_BASE64_TEXT"] = f"{part.content_type} in base64, ASCII inside"
                return

    @staticmethod
    def _list(message: ParsedMessage, hits: dict[str, str]) -> None:
        """List mail that says what it is (RFC 2919 List-Id, RFC 2369 List-Unsubscribe with a
        URI) *and is the sender's own*: the List-Id's registrable domain is From's. Then a
        little in its favour, as bulk mail that can be left is rarely the worst. A discussion
        list's List-Id is on everything posted to it, spam included, so it says nothing of the
        message (measured: bench/results/rule-stats.md)."""
        list_id = _headers(message, "List-Id")
        unsubscribe = _headers(message, "List-Unsubscribe")
        if not (list_id and "<" in list_id[0] and unsubscribe and "<" in unsubscribe[0]):
            return
        senders = _addresses(_headers(message, "From")[:1])
        hosts = _ANGLE.findall(list_id[0])
        if not senders or not hosts:
            return
        own = registrable_domain(_domain_of(senders[0][1]))
        if own and registrable_domain(decode_host(hosts[0])) == own:
            hits["LIST_ID_UNSUBSCRIBE"] = f"List-Id {list_id[0].strip()[:100]}"

    def _addresses(self, message: ParsedMessage, hits: dict[str, str]) -> None:
        senders = _addresses(_headers(message, "From")[:1])
        reply_to = _addresses(_headers(message, "Reply-To")[:1])
        if not senders:
            return
        name, address = senders[0]
        domain = _domain_of(address)
        registrable = registrable_domain(domain) or domain
        lists = _list_domains(message)
        for _, other in reply_to:
            other_domain = _domain_of(other)
            other_registrable = registrable_domain(other_domain) or other_domain
            if other_registrable != registrable and other_registrable not in lists:
                hits["FROM_REPLYTO_MISMATCH"] = f"From {registrable}, Reply-To {other_domain}"
                break
        shown = unicodedata.normalize("NFKC", name).casefold()
        for protected in self.protected:
            if _in_domain(domain, protected.domain):
                continue
            pattern = rf"(?<![a-z0-9-]){re.escape(protected.domain)}(?![a-z0-9-])"
            if protected.domain in shown and re.search(pattern, shown):
                hits["DISPLAY_NAME_SPOOF"] = f"{name[:60]!r} <{address[:60]}>"
                break
        for where, pairs in (("From", senders), ("Reply-To", reply_to)):
            for _, each in pairs:
                self._lookalike(_domain_of(each), where, message.policy.rules, hits)
        # The envelope sender: where bounces and replies of some clients go, and what a
        # recipient's mail client may show ("on behalf of") when it differs from From.
        if message.envelope.mail_from:
            envelope_domain = _domain_of(message.envelope.mail_from)
            self._lookalike(envelope_domain, "MAIL FROM", message.policy.rules, hits)

    def _lookalike(
        self,
        host: str,
        where: str,
        rules: RulesSettings,
        hits: dict[str, str],
        *,
        again: bool = False,
    ) -> None:
        """Imitations of the protected domains in ``host``. Hosts in a protected domain or in
        ``lookalike_allow`` imitate nothing. ``again``: its registrable domain was compared
        already, only a protected name in front of it is left to look for."""
        if not self.protected or not host:
            return
        allowed = _normalised(tuple(rules.lookalike_allow))
        parents = _parents(host)
        if not self.own.isdisjoint(parents) or not allowed.isdisjoint(parents):
            return
        candidate = Domain.of(host)
        if candidate is None:
            return
        for protected in () if again else self.protected:
            symbol = lookalike(candidate, protected, rules)
            if symbol and symbol not in hits:
                hits[symbol] = f"{where} {host[:80]} imitates {protected.domain}"
            if COMBOSQUAT not in hits and combosquat(candidate, protected, rules):
                hits[COMBOSQUAT] = (
                    f"{where} {host[:80]} imitates {protected.domain} (its name with other words)"
                )
        if COMBOSQUAT not in hits and self.names is not None and host != candidate.domain:
            name = name_inside(host, candidate, self.names)
            if name is not None:
                hits[COMBOSQUAT] = (
                    f"{where} {host[:80]} imitates {self.by_skeleton[name].domain}"
                    " (its name inside another domain)"
                )

    @staticmethod
    def _body(message: ParsedMessage, rules: RulesSettings, hits: dict[str, str]) -> list[Url]:
        links: list[str] = []
        facts = _HtmlFacts()
        types: set[str] = set()
        for content_type, text in body_parts(message):
            types.add(content_type)
            if content_type == "text/html":
                inspector = HtmlInspector(rules)
                feed_html(inspector, text)
                links.extend(inspector.links)
                facts.visible += inspector.facts.visible
                facts.hidden += inspector.facts.hidden
                facts.sample.extend(inspector.facts.sample)
            else:
                links.extend(urls_in_text(text))
        if "text/html" in types and "text/plain" not in types:
            hits["HTML_ONLY"] = "HTML without a text/plain alternative"
        total = facts.visible + facts.hidden
        if (
            facts.hidden >= rules.hidden_text_min_chars
            and facts.hidden >= rules.hidden_text_min_ratio * total
        ):
            sample = " | ".join(facts.sample[:3])
            hits["HTML_HIDDEN_TEXT"] = f"{facts.hidden} of {total} characters hidden: {sample}"
        return unique_urls(links, rules.max_urls)

    def _links(self, urls: list[Url], rules: RulesSettings, hits: dict[str, str]) -> None:
        shorteners = [s.lower().strip(".") for s in rules.url_shorteners]
        hosts: dict[str, None] = {}
        for url in urls:
            if url.is_ip:
                hits.setdefault("URL_IP_LITERAL", url.url[:100])
            elif url.host:
                hosts[url.host] = None
        domains: set[str | None] = set()
        for host in hosts:
            if "URL_SHORTENER" not in hits and any(_in_domain(host, s) for s in shorteners):
                hits["URL_SHORTENER"] = host
            domain = registrable_domain(host)
            if domain not in domains:  # one full look per registrable domain
                domains.add(domain)
                self._lookalike(host, "link", rules, hits)
            elif COMBOSQUAT not in hits:  # login.example.test.evil.test after www.evil.test
                self._lookalike(host, "link", rules, hits, again=True)
