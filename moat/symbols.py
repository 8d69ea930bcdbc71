"""The symbol table: every symbol a check can emit, with its score or its forced action, in
one place (docs/symbols.md is generated from it and checked against it by a test).

Like Rspamd, symbols and actions are kept apart: a check reports *what it saw* (a symbol and a
detail); this table says *what that counts for*: a score added to the spam score, or an action
forced whatever the score (``virus``, ``policy`` or ``spam`` hold the message; ``allow`` spares
it the spam verdict, never a virus or policy one). ``decide()`` reads scores from here only.

Overrides: ``scanner.symbols.<NAME>: <score>`` globally or under ``domains.<d>.scanner``; a
mapping ``{score: .., action: ..}`` changes the action too (``action: none`` makes a forced
symbol a plain score). An unknown name fails at start-up. A few older switches
(``attachments.*_action: info``, ``auth.dmarc_reject: spam``) are read as overrides of the same
table, so there is one place that decides.

Adding a symbol: one line in ``SYMBOLS`` (and the check that emits it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, cast

from moat.model import Category, Finding

if TYPE_CHECKING:
    from moat.settings import ScannerSettings

Action = Literal["virus", "policy", "spam", "allow"]
ACTIONS: tuple[Action, ...] = ("virus", "policy", "spam", "allow")


@dataclass(frozen=True)
class Symbol:
    name: str
    group: str  # the check (or family of checks) that emits it
    score: float = 0.0
    action: Action | None = None  # forced whatever the score; None: only the score counts
    description: str = ""
    # Blocklist listings are weighted per DNS answer by the zone's ``codes`` (data of the zone,
    # like Rspamd's rbl return codes): their finding carries that weight as its score.
    weighted_by_zone: bool = False

    @property
    def category(self) -> Category:
        """The category a finding of this symbol is recorded with."""
        if self.action in ("virus", "policy", "spam"):
            return Category(self.action)
        return Category.SPAM if self.score else Category.INFO


def _s(
    name: str, group: str, score: float = 0.0, action: Action | None = None, what: str = ""
) -> Symbol:
    return Symbol(name, group, score, action, what)


# The classifier's bands, as SpamAssassin's BAYES_xx: (symbol, lower bound of the spam
# probability, score). The scores are SpamAssassin 4's defaults (its BAYES_20/40 of -0.001
# rounded to -0.2 and 0), except BAYES_999: SpamAssassin adds 0.2 on top of BAYES_99, we give
# it 5.0 alone, so that a calibrated one-in-a-thousand chance of ham reaches the threshold by
# itself (with our few rules, recall would otherwise rest on them). Every other band needs a
# second signal, so "HTML only" plus a confident-but-wrong classifier does not quarantine.
BAYES_BANDS: tuple[tuple[str, float, float], ...] = (
    ("BAYES_00", 0.0, -1.9),
    ("BAYES_05", 0.01, -0.5),
    ("BAYES_20", 0.05, -0.2),
    ("BAYES_40", 0.20, 0.0),
    ("BAYES_50", 0.40, 0.8),
    ("BAYES_60", 0.60, 1.5),
    ("BAYES_80", 0.80, 2.0),
    ("BAYES_95", 0.95, 3.0),
    ("BAYES_99", 0.99, 3.5),
    ("BAYES_999", 0.999, 5.0),
)


def bayes_band(probability: float) -> str:
    """The band symbol of a spam probability: the highest band whose lower bound it reaches."""
    name = BAYES_BANDS[0][0]
    for symbol, lower, _score in BAYES_BANDS:
        if probability >= lower:
            name = symbol
    return name


_BAYES = tuple(
    _s(name, "classifier", score, None, f"spam probability from {lower:g}")
    for name, lower, score in BAYES_BANDS
)

SYMBOLS: Mapping[str, Symbol] = {
    s.name: s
    for s in (
        # --- test strings (testfiles.py) ---
        _s("EICAR_TEST_FILE", "eicar", 100.0, "virus", "the EICAR anti-virus test file"),
        _s("GTUBE", "gtube", 1000.0, "spam", "the GTUBE anti-spam test string"),
        # --- ClamAV (clamav.py) ---
        _s("CLAMAV_VIRUS", "clamav", 100.0, "virus", "clamd found a virus"),
        _s("CLAMAV_DISABLED", "clamav", 0.0, None, "ClamAV is off: not virus-scanned"),
        _s("CLAMAV_UNAVAILABLE", "clamav", 0.0, None, "clamd down and fail_closed off"),
        _s("CLAMAV_TOO_BIG", "clamav", 0.0, None, "a part over clamd's StreamMaxLength"),
        # --- attachments, archives, documents (attachments.py) ---
        _s("ATTACHMENT_EXECUTABLE", "attachments", 10.0, "policy", "an executable"),
        _s("ATTACHMENT_SCRIPT", "attachments", 10.0, "policy", "a script"),
        _s("ATTACHMENT_MACRO", "attachments", 10.0, "policy", "an Office file with macros"),
        _s("ATTACHMENT_DISK_IMAGE", "attachments", 10.0, "policy", "a disk image"),
        _s("ATTACHMENT_BLOCKED_EXTENSION", "attachments", 10.0, "policy", "a blocked extension"),
        _s("ATTACHMENT_TYPE_MISMATCH", "attachments", 10.0, "policy", "named inert, is not"),
        _s("ATTACHMENT_PDF_ACTIVE", "attachments", 10.0, "policy", "a PDF with JavaScript"),
        _s("ARCHIVE_BOMB", "attachments", 10.0, "policy", "a decompression bomb"),
        _s("ARCHIVE_LIMIT", "attachments", 10.0, "policy", "past the archive limits"),
        _s("ARCHIVE_ENCRYPTED", "attachments", 10.0, "policy", "an encrypted archive or file"),
        _s("ARCHIVE_OPAQUE", "attachments", 0.0, None, "an archive recognised, not opened"),
        _s("ARCHIVE_CORRUPT", "attachments", 10.0, "policy", "an archive that cannot be read"),
        _s("MIME_UNSCANNABLE", "attachments", 10.0, "policy", "MIME too deep, many or big"),
        _s("MIME_DEFECT", "attachments", 0.0, None, "parser defects that may hide content"),
        # --- the classifier (classifier.py) ---
        *_BAYES,
        # --- SPF, DKIM, DMARC, ARC (auth.py) ---
        _s("AUTH_RESULTS", "auth", 0.0, None, "the Authentication-Results value"),
        _s("SPF_PASS", "auth", 0.0, None, "SPF pass (unaligned alone: no credit)"),
        _s("SPF_FAIL", "auth", 2.0, None, "SPF fail (-all)"),
        _s("SPF_SOFTFAIL", "auth", 1.0, None, "SPF softfail (~all)"),
        _s("SPF_NEUTRAL", "auth", 0.0, None, "SPF neutral (?all)"),
        _s("SPF_PERMERROR", "auth", 0.5, None, "a broken SPF record"),
        _s("SPF_TEMPERROR", "auth", 0.0, None, "SPF could not be evaluated (DNS)"),
        _s("DKIM_VALID", "auth", 0.0, None, "a DKIM signature verified, not From-aligned"),
        _s("DKIM_VALID_ALIGNED", "auth", -1.0, None, "a DKIM pass aligned with From"),
        # SpamAssassin's 0.1: lists and forwarders break signatures, keys of old mail are
        # rotated away; a forged signature is no worse than none.
        _s("DKIM_INVALID", "auth", 0.1, None, "signed, but no signature verified"),
        _s("DKIM_TEMPERROR", "auth", 0.0, None, "a DKIM key could not be looked up"),
        _s("DMARC_PASS", "auth", -1.0, None, "DMARC pass (SPF or DKIM aligned with From)"),
        _s("DMARC_FAIL", "auth", 1.0, None, "DMARC fail under p=none"),
        _s("DMARC_QUARANTINE", "auth", 5.0, None, "DMARC fail under p=quarantine"),
        _s("DMARC_REJECT", "auth", 10.0, "policy", "DMARC fail under p=reject"),
        _s("DMARC_TEMPERROR", "auth", 0.0, None, "DMARC could not be evaluated (DNS)"),
        _s("DMARC_FAIL_ARC_TRUSTED", "auth", 0.0, None, "DMARC fail, a trusted ARC said pass"),
        _s("ARC_PASS", "auth", 0.0, None, "a valid ARC chain, sealer not trusted"),
        _s("ARC_TRUSTED", "auth", -1.0, None, "a valid ARC chain sealed by a trusted sealer"),
        _s("ARC_FAIL", "auth", 0.0, None, "an ARC chain that does not validate"),
        _s("FROM_OWN_DOMAIN_UNAUTH", "auth", 3.0, None, "From one of our domains, no DMARC pass"),
        _s("LIST_ONECLICK", "auth", -1.0, None, "RFC 8058 one-click unsubscribe, DKIM-aligned"),
        # --- header and content rules (headers.py) ---
        _s("MISSING_DATE", "rules", 1.0, None, "no Date header"),
        _s("INVALID_DATE", "rules", 1.0, None, "a Date that does not parse"),
        _s("DATE_IN_FUTURE", "rules", 1.5, None, "Date later than arrival"),
        _s("DATE_IN_PAST", "rules", 0.5, None, "Date long before arrival"),
        _s("MISSING_MESSAGE_ID", "rules", 1.0, None, "no Message-ID"),
        _s("INVALID_MESSAGE_ID", "rules", 1.5, None, "a Message-ID that is not <left@right>"),
        # Halved (1.0, 1.5 before; docs/checks/rules.md "Scores"): they fire on 21% of the
        # ham of some sources, more often than on their spam.
        _s("FROM_REPLYTO_MISMATCH", "rules", 0.5, None, "Reply-To in another domain than From"),
        _s("DISPLAY_NAME_SPOOF", "rules", 3.0, None, "a protected domain in a display name"),
        _s("HTML_ONLY", "rules", 1.0, None, "HTML without a text/plain alternative"),
        _s("HTML_HIDDEN_TEXT", "rules", 0.75, None, "invisible text in HTML"),
        _s("URL_SHORTENER", "rules", 1.0, None, "links through a URL shortener"),
        _s("URL_IP_LITERAL", "rules", 2.0, None, "links to an IP address"),
        _s("LOOKALIKE_DOMAIN", "rules", 3.0, None, "a domain a small edit from a protected one"),
        _s("HOMOGRAPH_DOMAIN", "rules", 4.0, None, "a domain that renders like a protected one"),
        _s("COMBOSQUAT_DOMAIN", "rules", 2.5, None, "a protected name with other words"),
        # New rules score 1.5 (docs/checks/rules.md, "Adding a rule"): never alone, and not
        # with the classifier's BAYES_95 either; a third signal is needed.
        _s("SUBJ_ALL_CAPS", "rules", 1.5, None, "a Subject of 3+ words, all capitals"),
        _s("MIME_BASE64_TEXT", "rules", 1.5, None, "a text body part in base64, ASCII inside"),
        _s("LIST_ID_UNSUBSCRIBE", "rules", -0.5, None, "own list: List-Id in From's domain"),
        # --- blocklists (reputation.py; the listed symbols come from the zones) ---
        _s("DNSBL_TEMPFAIL", "reputation", 0.0, None, "a blocklist did not answer"),
        # --- sender lists (sender_lists.py) ---
        _s("SENDER_BLOCKED", "sender_lists", 10.0, "policy", "a recipient blocks the sender"),
        _s("SENDER_ALLOWED", "sender_lists", 0.0, "allow", "every recipient allows the sender"),
    )
}


class UnknownSymbol(ValueError):
    pass


def zone_symbol_name(zone_name: str, symbol: str, prefix: str) -> str:
    """A blocklist's symbol: its own, else RBL_/URIBL_ and the zone (RBL_ZEN_SPAMHAUS_ORG)."""
    return symbol or prefix + re.sub(r"[^A-Z0-9]+", "_", zone_name.upper()).strip("_")


def blocklist_symbols(policy: ScannerSettings) -> dict[str, Symbol]:
    """The symbols of the configured blocklist zones, each with the zone's weight."""
    rules = policy.rules
    found: dict[str, Symbol] = {}
    for zones, prefix, group in (
        (rules.dnsbl_zones, "RBL_", "reputation"),
        (rules.uribl_zones, "URIBL_", "reputation"),
    ):
        for zone in zones:
            name = zone_symbol_name(zone.zone, zone.symbol, prefix)
            found[name] = Symbol(
                name, group, zone.weight, None, f"listed in {zone.zone}", weighted_by_zone=True
            )
    return found


def known_names(policy: ScannerSettings) -> set[str]:
    return set(SYMBOLS) | set(blocklist_symbols(policy))


def _action(override: str | None, current: Action | None) -> Action | None:
    if override is None:
        return current
    if override == "none":
        return None
    return cast(Action, override)


class SymbolTable:
    """The table in force for one scanner policy: defaults, the policy's switches, then its
    ``symbols`` overrides."""

    def __init__(self, symbols: Mapping[str, Symbol]) -> None:
        self.symbols = dict(symbols)

    @classmethod
    def for_policy(cls, policy: ScannerSettings) -> SymbolTable:
        symbols = dict(SYMBOLS)
        symbols.update(blocklist_symbols(policy))
        a = policy.attachments
        switches: dict[str, str] = {
            "ARCHIVE_ENCRYPTED": a.encrypted_archive_action,
            "ARCHIVE_OPAQUE": a.opaque_archive_action,
            "ARCHIVE_CORRUPT": a.corrupt_archive_action,
            "ATTACHMENT_PDF_ACTIVE": a.pdf_active_action,
        }
        for name, choice in switches.items():
            if choice == "info":
                symbols[name] = replace(symbols[name], score=0.0, action=None)
            else:
                symbols[name] = replace(symbols[name], score=10.0, action="policy")
        if policy.auth.dmarc_reject == "spam":
            symbols["DMARC_REJECT"] = replace(symbols["DMARC_REJECT"], action=None)
        for name, override in policy.symbols.items():
            if name not in symbols:
                raise UnknownSymbol(f"unknown symbol in scanner.symbols: {name}")
            if isinstance(override, int | float):
                symbols[name] = replace(symbols[name], score=float(override))
            else:
                entry = symbols[name]
                symbols[name] = replace(
                    entry,
                    score=entry.score if override.score is None else override.score,
                    action=_action(override.action, entry.action),
                )
        return cls(symbols)

    def get(self, name: str) -> Symbol | None:
        return self.symbols.get(name)

    def finding(
        self, check: str, symbol: str, detail: str = "", *, probability: float | None = None
    ) -> Finding:
        """A finding of ``symbol`` recorded with the category and score this table gives it."""
        entry = self.symbols[symbol]
        return Finding(
            check=check,
            symbol=symbol,
            category=entry.category,
            score=entry.score,
            detail=detail,
            probability=probability,
        )

    def score(self, finding: Finding) -> Finding:
        """``finding`` as this table counts it. Failures stay failures; a symbol not in the
        table (a check's ``*_NONE``) is informational; a blocklist listing keeps its zone's
        per-answer weight."""
        if finding.category == Category.FAILURE:
            return finding
        entry = self.symbols.get(finding.symbol)
        if entry is None:
            category, score = Category.INFO, 0.0
        else:
            category = entry.category
            score = finding.score if entry.weighted_by_zone else entry.score
        if finding.category == category and finding.score == score:
            return finding  # as counted already (checks make findings from this table): no copy
        return finding.model_copy(update={"category": category, "score": score})

    def action(self, symbol: str) -> Action | None:
        entry = self.symbols.get(symbol)
        return entry.action if entry else None

    def rows(self) -> Iterable[Symbol]:
        return sorted(self.symbols.values(), key=lambda s: (s.group, s.name))


def markdown() -> str:
    """The default table as docs/symbols.md shows it (a test keeps the two the same; write
    it with ``python -m moat.symbols > docs/symbols.md``)."""
    lines = [
        "# Symbols",
        "",
        "Every symbol a check emits and what it counts for: a score added to the spam score, or",
        "an action forced whatever the score. Generated from `moat/symbols.py` (`python -m",
        "moat.symbols > docs/symbols.md`); `tests/unit/test_symbols.py` fails when they differ.",
        "",
        "Override per installation or per domain (`domains.<d>.scanner.symbols`):",
        "",
        "```yaml",
        "scanner:",
        "  symbols:",
        "    HTML_ONLY: 0.5                   # a new score (0 turns a rule off)",
        "    URL_IP_LITERAL: {action: policy} # force an action: virus, policy, spam, allow",
        "    GTUBE: {action: none, score: 3}  # take a forced action away",
        "```",
        "",
        "An unknown name stops the service at start-up. A check that fails emits `<CHECK>_FAIL`",
        "(no verdict: the message is scanned again); one that finds nothing `<CHECK>_NONE`",
        "(informational). Blocklist zones add `RBL_<ZONE>` / `URIBL_<ZONE>` (or their `symbol`),",
        "weighted by the zone's `weight` and `codes`. Precedence of forced actions: virus, policy,",
        "allow (spares the spam verdict only), spam.",
        "",
        "| symbol | check | score | forced action | meaning |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for s in sorted(SYMBOLS.values(), key=lambda s: (s.group, s.name)):
        action = s.action or ""
        lines.append(f"| `{s.name}` | {s.group} | {s.score:g} | {action} | {s.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
