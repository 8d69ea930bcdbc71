"""The rules checks: header and content heuristics (headers.py), URL extraction (urls.py) and
DNS blocklists (reputation.py) against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from moat.model import Category, Finding, MessageEnvelope
from moat.settings import DnsSettings, DomainSettings, RulesSettings, ScannerSettings, Settings
from services.scanner.checks import ParsedMessage, build_checks, parse, run_checks, urls
from services.scanner.checks.headers import (
    Domain,
    HeaderRulesCheck,
    combosquat,
    edit_distance,
    lookalike,
    name_inside,
    names_pattern,
    skeleton,
)
from services.scanner.checks.reputation import ReputationCheck, reversed_ip
from services.scanner.checks.urls import (
    extract_urls,
    is_ip_literal,
    parse_url,
    registrable_domain,
    url_domains,
)
from tests.support.fakedns import FakeDNS
from tests.support.generated import fragment_strings

PROTECTED = ("moat.test", "example.test")
ARRIVAL = "Mon, 02 Jun 2025 10:00:00 +0000"
RECEIVED = f"from mx.sender.test (mx.sender.test [81.2.69.160]) by mx.moat.test; {ARRIVAL}"
from tests.support.corpus import CORPUS  # noqa: E402


def settings(**overrides: Any) -> Settings:
    domains = {name: DomainSettings(relay="127.0.0.1:2526") for name in PROTECTED}
    return Settings(domains=domains, **overrides)


def email(
    *,
    headers: dict[str, str] | None = None,
    text: str | None = "Hello, see you tomorrow.",
    html: str | None = None,
    defaults: bool = True,
    cte: str | None = None,
) -> bytes:
    """A message with sane headers (Received, Date, Message-ID, From) unless told otherwise.
    Headers are written as given (raw UTF-8 when not ASCII), without the library's cleaning."""
    message = EmailMessage(policy=SMTP)
    base = {
        "Received": RECEIVED,
        "Date": "Mon, 02 Jun 2025 09:58:00 +0000",
        "Message-ID": "<a1b2c3@mail.sender.test>",
        "From": "Alice <alice@sender.test>",
        "To": "bob@moat.test",
        "Subject": "lunch",
    }
    if text is not None:
        message.set_content(text, cte=cte)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    chosen = {**base, **(headers or {})} if defaults else headers or {}
    head = "".join(f"{name}: {value}\r\n" for name, value in chosen.items() if value)
    return head.encode() + message.as_bytes()


def scan(raw: bytes, config: Settings | None = None, **envelope: Any) -> list[Finding]:
    config = config or settings()
    message = parse("m1", raw, MessageEnvelope(**envelope), config.scanner_policy("moat.test"))
    return asyncio.run(HeaderRulesCheck(config).check(message))


def symbols(findings: list[Finding]) -> set[str]:
    return {f.symbol for f in findings}


# --- headers --------------------------------------------------------------------------------


def test_a_plain_good_message_has_no_findings() -> None:
    assert scan(email()) == []


def test_date_missing_malformed_future_and_past() -> None:
    assert symbols(scan(email(headers={"Date": ""}))) == {"MISSING_DATE"}
    assert symbols(scan(email(headers={"Date": "yesterday at noon"}))) == {"INVALID_DATE"}
    future = "Tue, 03 Jun 2025 10:00:00 +0000"  # 24 h after the Received date
    assert symbols(scan(email(headers={"Date": future}))) == {"DATE_IN_FUTURE"}
    past = "Mon, 05 May 2025 10:00:00 +0000"  # four weeks before it
    assert symbols(scan(email(headers={"Date": past}))) == {"DATE_IN_PAST"}
    near = "Mon, 02 Jun 2025 13:00:00 +0300"  # same moment in another zone
    assert scan(email(headers={"Date": near})) == []


def test_date_thresholds_are_settings() -> None:
    lenient = settings(scanner={"rules": {"date_future_hours": 48, "date_past_days": 60}})
    assert scan(email(headers={"Date": "Tue, 03 Jun 2025 10:00:00 +0000"}), lenient) == []
    assert scan(email(headers={"Date": "Mon, 05 May 2025 10:00:00 +0000"}), lenient) == []


def test_message_id_missing_and_malformed() -> None:
    assert symbols(scan(email(headers={"Message-ID": ""}))) == {"MISSING_MESSAGE_ID"}
    for bad in ("a1b2c3", "<no-at-sign>", "<a@b> <c@d>"):
        assert symbols(scan(email(headers={"Message-ID": bad}))) == {"INVALID_MESSAGE_ID"}, bad


def test_from_reply_to_mismatch() -> None:
    other = {"Reply-To": "payments@collector.test"}
    assert symbols(scan(email(headers=other))) == {"FROM_REPLYTO_MISMATCH"}
    same = {"Reply-To": "Desk <desk@mail.sender.test>"}  # same registrable domain
    assert scan(email(headers=same)) == []
    listed = {"Reply-To": "devs@lists.project.test", "List-Id": "Devs <devs.lists.project.test>"}
    assert scan(email(headers=listed)) == []


def test_subject_all_capitals() -> None:
    for shouted in ("FREE PILLS FOR YOU TODAY", "=?utf-8?q?ACT_NOW_=E2=80=93_LIMITED_OFFER?="):
        found = scan(email(headers={"Subject": shouted}))
        assert symbols(found) == {"SUBJ_ALL_CAPS"}, shouted
    # An acronym or two, a short shout, capitals without letters enough: ham-like, no hit.
    calm_subjects = (
        "NASA report for the Q3 review",
        "URGENT NOTICE",
        "RE: FW: Q3 KPI 2025",
        "Re: FREE PILLS FOR YOU TODAY",  # a reply quoting a shout
        "=?utf-8?b?UkU6IOWFs+S6jiBOQVNBIOWSjCBFU0Eg55qE5oql5ZGKIFBERg==?=",  # CJK, acronyms
        "lunch",
    )
    for calm in calm_subjects:
        assert scan(email(headers={"Subject": calm})) == [], calm


def test_ascii_text_in_base64() -> None:
    plain = "Dear friend, claim your prize today at the link below. " * 3
    assert symbols(scan(email(text=plain, cte="base64"))) == {"MIME_BASE64_TEXT"}
    # The same words in quoted-printable or 7bit, or base64 of text that needs it: no hit.
    assert scan(email(text=plain, cte="quoted-printable")) == []
    assert scan(email(text=plain)) == []
    assert scan(email(text="Grüße aus München, bis morgen beim Mittagessen.", cte="base64")) == []


def test_list_id_counts_for_the_senders_own_list_only() -> None:
    own = {
        "From": "Shop News <news@shop.test>",
        "List-Id": "Shop news <news.mail.shop.test>",
        "List-Unsubscribe": "<https://shop.test/unsubscribe?u=1>",
    }
    found = scan(email(headers=own))
    assert symbols(found) == {"LIST_ID_UNSUBSCRIBE"}
    assert found[0].score < 0
    # Posted to a discussion list (spam is, too): the list's headers say nothing of the mail.
    posted = own | {"From": "Someone <someone@elsewhere.test>"}
    assert scan(email(headers=posted)) == []
    assert scan(email(headers=own | {"List-Unsubscribe": ""})) == []


def test_display_name_spoofing_of_a_protected_domain() -> None:
    for name in ('"moat.test IT desk"', '"ceo@moat.test"', '"Payroll (MOAT.TEST)"'):
        found = scan(email(headers={"From": f"{name} <it@attacker.test>"}))
        assert symbols(found) == {"DISPLAY_NAME_SPOOF"}, name
    # From the protected domain itself (or a subdomain), or a name that only contains it.
    assert scan(email(headers={"From": '"moat.test IT" <it@mail.moat.test>'})) == []
    assert scan(email(headers={"From": '"notmoat.testing" <x@attacker.test>'})) == []
    encoded = "=?utf-8?q?moat=2Etest_support?= <x@attacker.test>"
    assert symbols(scan(email(headers={"From": encoded}))) == {"DISPLAY_NAME_SPOOF"}


def test_html_only_and_with_alternative() -> None:
    assert symbols(scan(email(text=None, html="<p>Hello there, friend.</p>"))) == {"HTML_ONLY"}
    assert scan(email(html="<p>Hello there, friend.</p>")) == []


HIDDEN = "cheap words that bayes filters should read but you should not " * 2


@pytest.mark.parametrize(
    "markup",
    [
        f'<div style="display:none">{HIDDEN}</div>',
        f'<span style="visibility: hidden">{HIDDEN}</span>',
        f'<p style="font-size:0px">{HIDDEN}</p>',
        f'<p style="FONT-SIZE: 1px">{HIDDEN}</p>',
        f'<div style="font-size:0px"><p style="font-size:2em">{HIDDEN}</p></div>',
        f'<td style="font-size:0"><span style="color:red">{HIDDEN}</span></td>',
        f'<div style="display:none"><p style="font-size:14px">{HIDDEN}</p></div>',
        f'<font color="#ffffff">{HIDDEN}</font>',
        f'<div style="background:#000"><span style="color:rgb(5,5,5)">{HIDDEN}</span></div>',
        f"<table bgcolor=white><tr><td><font color=#FEFEFE>{HIDDEN}</font></td></tr></table>",
    ],
)
def test_hidden_html_text(markup: str) -> None:
    html = f"<html><body><p>Buy now, great offer.</p>{markup}<p>Visit us</p></body></html>"
    assert symbols(scan(email(html=html))) == {"HTML_HIDDEN_TEXT"}


@pytest.mark.parametrize(
    "markup",
    [
        f'<div style="background-color:#000000"><font color="#ffffff">{HIDDEN}</font></div>',
        f'<td background="img.gif"><font color=white>{HIDDEN}</font></td>',
        f'<p style="font-size:12px;color:#333">{HIDDEN}</p>',
        # the MJML layout idiom: wrappers at font-size 0, the text inside sized again
        f'<td style="font-size:0px"><div style="font-size:14px;color:#333">{HIDDEN}</div></td>',
        f'<div style="font-size:0"><div style="font-size:0"><p style="font-size:1rem">{HIDDEN}</p>'
        "</div></div>",
        '<div style="display:none">Your June newsletter</div>' + "<p>" + HIDDEN * 3 + "</p>",
        # a preheader padded with zero-width characters: the padding is no text at all
        '<div style="display:none">Your June newsletter'
        + "\u200c\u034f\u00ad\ufeff \u2007" * 120
        + "</div><p>"
        + HIDDEN * 3
        + "</p>",
        f"<style>.x {{ color: red }} {HIDDEN}</style><p>visible</p>",
    ],
)
def test_visible_html_text_is_not_hidden(markup: str) -> None:
    html = f"<html><body><p>Monthly report.</p>{markup}</body></html>"
    assert scan(email(html=html)) == []


def test_url_shorteners_and_ip_literals() -> None:
    shortened = '<a href="https://bit.ly/3xYz">track your parcel</a>'
    assert symbols(scan(email(html=shortened))) == {"URL_SHORTENER"}
    assert symbols(scan(email(text="go to https://T.CO/abc now"))) == {"URL_SHORTENER"}
    assert scan(email(text="see https://notbit.ly/x and https://bit.lyrics.test/")) == []
    for link in (
        "http://192.0.2.1/login",
        "http://3221225985/login",
        "http://0xc0.0.2.1/x",
        "http://[2001:db8::1]/x",
        "https://user@198.51.100.7:8443/",
    ):
        assert symbols(scan(email(text=f"log in at {link} today"))) == {"URL_IP_LITERAL"}, link
    assert scan(email(text="log in at http://host1.sender.test/192.0.2.1 today")) == []


@pytest.mark.parametrize(
    ("from_address", "symbol"),
    [
        ("it@ex\u0430mple.test", "HOMOGRAPH_DOMAIN"),  # Cyrillic a (U+0430)
        ("it@xn--exmple-4nf.test", "HOMOGRAPH_DOMAIN"),  # the same, as sent in DNS form
        ("it@examp1e.test", "HOMOGRAPH_DOMAIN"),  # digit one for l
        ("it@rnoat.test", "HOMOGRAPH_DOMAIN"),  # rn for m
        ("it@m0at.test", "HOMOGRAPH_DOMAIN"),  # zero for o
        ("it@\uff4d\uff4f\uff41\uff54-login.test", None),  # fullwidth, but another name
        ("it@exmaple.test", "LOOKALIKE_DOMAIN"),  # swapped letters
        ("it@exampel.test", "LOOKALIKE_DOMAIN"),
        ("it@mooat.test", "LOOKALIKE_DOMAIN"),
        ("it@mail.moat.test", None),  # our own
        ("it@example.org", None),  # another suffix: not compared by distance
        ("it@sample.test", None),  # distance 2 on a 7-letter label: too far
        ("it@moat-landing.test", None),  # the whole name and more: not a typo
        ("it@goat-farm.test", None),
    ],
)
def test_lookalike_and_homograph_senders(from_address: str, symbol: str | None) -> None:
    raw = email(headers={"From": f"IT <{from_address}>"}, text="Please reset your password.")
    expected = {symbol} if symbol else set()
    assert symbols(scan(raw)) == expected


def test_lookalikes_in_reply_to_and_links() -> None:
    raw = email(headers={"Reply-To": "billing@rnoat.test", "From": "billing@rnoat.test"})
    found = {f.symbol: f.detail for f in scan(raw)}
    assert set(found) == {"HOMOGRAPH_DOMAIN"} and "imitates moat.test" in found["HOMOGRAPH_DOMAIN"]
    link = '<a href="https://login.ex\u0430mple.test/reset">Reset</a>'
    found = {f.symbol: f.detail for f in scan(email(html=link))}
    assert set(found) == {"HOMOGRAPH_DOMAIN"} and found["HOMOGRAPH_DOMAIN"].startswith("link ")
    assert scan(email(html='<a href="https://www.moat.test/reset">Reset</a>')) == []


def test_lookalikes_in_the_envelope_sender() -> None:
    raw = email(headers={"From": "IT <it@outside.test>"})
    found = {f.symbol: f.detail for f in scan(raw, mail_from="bounce@examp1e.test")}
    assert set(found) == {"HOMOGRAPH_DOMAIN"}
    assert found["HOMOGRAPH_DOMAIN"].startswith("MAIL FROM ")
    found = {f.symbol: f.detail for f in scan(raw, mail_from="bounce@example-billing.test")}
    assert set(found) == {"COMBOSQUAT_DOMAIN"}
    assert scan(raw, mail_from="bounce@mail.example.test") == []  # its own subdomain
    assert scan(raw, mail_from="") == []  # the null sender


@pytest.mark.parametrize(
    ("from_address", "how"),
    [
        ("it@example-login.test", "with other words"),
        ("it@secure-example.net", "with other words"),  # any suffix
        ("it@my-example-account.test", "with other words"),
        ("it@examplesupport.test", "with other words"),  # glued: "example" is 7 letters long
        ("it@supportexample.com", "with other words"),
        ("it@examp1e-billing.test", "with other words"),  # a look-alike of the name, and a word
        ("it@ex\u0430mple-login.test", "with other words"),  # Cyrillic a
        ("it@exmaple-billing.com", "with other words"),  # a typo of the name, and a word
        ("it@example.test-verify.info", "inside another domain"),
        ("it@login.example.test.evil.ru", "inside another domain"),
        ("it@examp1e.test.evil.ru", "inside another domain"),
        ("it@example.test", None),  # ours
        ("it@mail.example.test", None),
        ("it@example.org", None),  # the same name under another suffix: not flagged
        ("it@examples.net", None),  # a plural is no other word
        ("it@example.evil.ru", None),  # the name alone as a subdomain (SaaS tenants look so)
        ("it@moat-landing.test", None),  # "moat" is under combosquat_min_length
        ("it@moat.test.evil.ru", "inside another domain"),  # the whole domain: at any length
        ("it@boat-example-ish.test", "with other words"),
        ("it@sample-login.test", None),  # distance 2 on a 7-letter name
    ],
)
def test_combosquat_senders(from_address: str, how: str | None) -> None:
    raw = email(headers={"From": f"IT <{from_address}>"}, text="Please reset your password.")
    found = {f.symbol: f.detail for f in scan(raw)}
    if how is None:
        assert "COMBOSQUAT_DOMAIN" not in found
    else:
        assert set(found) == {"COMBOSQUAT_DOMAIN"}
        assert found["COMBOSQUAT_DOMAIN"].startswith(f"From {from_address[3:]} imitates ")
        assert found["COMBOSQUAT_DOMAIN"].endswith(f"({'its name ' + how})")


def test_combosquat_gmail_is_no_imitation_of_mail() -> None:
    """``mail`` is too short to be a brand (combosquat_min_length), and even when it counts it
    only does as a word of its own: mail-login.com, not gmail.com or hotmail.com."""
    protected = Domain.of("mail.com")
    assert protected is not None

    def squats(host: str, **rules: Any) -> bool:
        candidate = Domain.of(host)
        assert candidate is not None
        return combosquat(candidate, protected, RulesSettings(**rules))

    assert not squats("gmail.com") and not squats("mail-login.com")  # "mail": 4 letters
    assert not squats("gmail.com", combosquat_min_length=4)
    assert not squats("hotmail-login.com", combosquat_min_length=4)
    assert squats("mail-login.com", combosquat_min_length=4)
    assert not squats("googlemail.com", combosquat_min_length=4)
    # It is the glued rule that keeps them apart: lowered, "googlemail" counts ("gmail" never:
    # one added letter is a typo, LOOKALIKE_DOMAIN's business with the same suffix).
    assert squats("googlemail.com", combosquat_min_length=4, combosquat_glued_length=4)
    assert not squats("gmail.com", combosquat_min_length=4, combosquat_glued_length=4)
    config = Settings(domains={"mail.com": DomainSettings(relay="127.0.0.1:2526")})
    for host in ("gmail.com", "googlemail.com", "hotmail.com", "fastmail.com", "email.de"):
        raw = email(headers={"From": f"Ann <ann@{host}>"})
        message = parse("m1", raw, policy=config.scanner_policy("mail.com"))
        found = asyncio.run(HeaderRulesCheck(config).check(message))
        assert "COMBOSQUAT_DOMAIN" not in symbols(found), host


def test_combosquat_other_protected_and_allowed_domains() -> None:
    raw = email(headers={"From": "News <news@mail.example-mail.test>"})
    assert symbols(scan(raw)) == {"COMBOSQUAT_DOMAIN"}
    allowed = settings(scanner={"rules": {"lookalike_allow": ["Example-Mail.test."]}})
    assert scan(raw, allowed) == []  # the entry's subdomains too
    domains = {name: DomainSettings(relay="127.0.0.1:2526") for name in PROTECTED}
    ours = Settings(
        domains={**domains, "example-mail.test": DomainSettings(relay="127.0.0.1:2526")}
    )
    assert scan(raw, ours) == []  # another protected domain is ours, not an imitation
    typo = email(headers={"From": "IT <it@exmaple.test>"})  # the list holds for typos too
    assert symbols(scan(typo)) == {"LOOKALIKE_DOMAIN"}
    assert scan(typo, settings(scanner={"rules": {"lookalike_allow": ["exmaple.test"]}})) == []
    with pytest.raises(ValidationError):
        RulesSettings(lookalike_allow=[" . "])


def test_combosquat_short_names_are_a_setting() -> None:
    raw = email(headers={"From": "IT <it@moat-login.test>"})
    assert scan(raw) == []
    config = settings(scanner={"rules": {"combosquat_min_length": 4}})
    found = {f.symbol: f.detail for f in scan(raw, config)}
    assert found == {
        "COMBOSQUAT_DOMAIN": "From moat-login.test imitates moat.test (its name with other words)"
    }
    glued = email(headers={"From": "IT <it@examplesupport.test>"})
    config = settings(scanner={"rules": {"combosquat_glued_length": 8}})
    assert scan(glued, config) == []


def test_combosquat_in_reply_to_and_links() -> None:
    raw = email(headers={"Reply-To": "billing@example-billing.test"})
    found = {f.symbol: f.detail for f in scan(raw)}
    assert found["COMBOSQUAT_DOMAIN"].startswith("Reply-To example-billing.test imitates")
    # A link to a name inside a domain already seen in an earlier, harmless link.
    links = (
        '<a href="https://www.evil.test/">home</a>'
        '<a href="https://login.example.test.evil.test/reset">Reset</a>'
    )
    found = {f.symbol: f.detail for f in scan(email(html=links))}
    assert found == {
        "COMBOSQUAT_DOMAIN": "link login.example.test.evil.test imitates example.test"
        " (its name inside another domain)"
    }
    assert scan(email(html='<a href="https://www.example.test/x">x</a>')) == []


def test_combosquat_from_support_at_example_security_com() -> None:
    domains = {
        "example.com": DomainSettings(relay="127.0.0.1:2526"),
        "other.test": DomainSettings(
            relay="127.0.0.1:2526", scanner={"symbols": {"COMBOSQUAT_DOMAIN": 0}}
        ),
    }
    config = Settings(domains=domains)
    raw = email(
        headers={"From": "Example IT <support@example-security.com>", "To": "bob@example.com"},
        text="Your mailbox is full. Log in to keep your mail.",
    )
    message = parse(
        "m1",
        raw,
        MessageEnvelope(rcpt_tos=("bob@example.com",)),
        config.scanner_policy("example.com"),
    )
    found = asyncio.run(HeaderRulesCheck(config).check(message))
    assert [(f.check, f.symbol, f.category, f.score) for f in found] == [
        ("headers", "COMBOSQUAT_DOMAIN", Category.SPAM, 2.5)
    ]
    assert found[0].detail == (
        "From example-security.com imitates example.com (its name with other words)"
    )
    message = parse("m1", raw, policy=config.scanner_policy("other.test"))  # scored 0 there
    assert asyncio.run(HeaderRulesCheck(config).check(message)) == []


def test_combosquat_names_and_suffixes() -> None:
    protected = tuple(d for d in map(Domain.of, ("example.com", "mail.com")) if d is not None)
    names = names_pattern(protected)
    assert names is not None and names_pattern(()) is None

    def inside(host: str) -> str | None:
        candidate = Domain.of(host)
        assert candidate is not None and names is not None
        return name_inside(host, candidate, names)

    assert inside("example.com-verify.info") == inside("a.example.com.evil.ru") == "example.com"
    assert inside("mail.com.evil.ru") == "mail.com"
    for host in ("example.com.au", "www.example.com.au", "gmail.com.evil.ru", "example.com"):
        assert inside(host) is None, host  # its own name under another suffix; other names
    assert inside("xexample.com.evil.ru") is None and inside("example.comx.evil.ru") is None
    hyphenated = Domain.of("example-mail.com")  # a protected name with a hyphen of its own
    assert hyphenated is not None
    for brand, host, expected in (
        (protected[0], "example.com.au", False),
        (protected[0], "example-com.au", True),
        (hyphenated, "example-mail-login.com", True),
        (hyphenated, "exanple-mail-login.com", True),
        (hyphenated, "exanple-mail.com", False),  # a typo alone: LOOKALIKE_DOMAIN's business
        (hyphenated, "example-login.com", False),
    ):
        candidate = Domain.of(host)
        assert candidate is not None
        assert combosquat(candidate, brand, RulesSettings()) is expected, host


def test_other_filters_headers_are_neither_trusted_nor_used() -> None:
    claims = {
        "X-Spam-Status": "Yes, score=45.0 required=5.0",
        "X-Spam-Flag": "YES",
        "X-Virus-Status": "Infected",
        "X-Moat-Verdict": "clean",
        "X-Moat-Score": "-100",
    }
    assert scan(email(headers=claims)) == []
    spammy = {"Message-ID": "", "Date": "garbage"}
    assert symbols(scan(email(headers={**spammy, **claims}))) == symbols(
        scan(email(headers=spammy))
    )


def test_scores_are_settings_and_zero_turns_a_rule_off() -> None:
    raw = email(headers={"Message-ID": "", "Date": ""})
    default = {f.symbol: f.score for f in scan(raw)}
    assert default == {"MISSING_MESSAGE_ID": 1.0, "MISSING_DATE": 1.0}
    tuned = settings(scanner={"symbols": {"MISSING_DATE": 0, "MISSING_MESSAGE_ID": 2.5}})
    assert {f.symbol: f.score for f in scan(raw, tuned)} == {"MISSING_MESSAGE_ID": 2.5}
    assert all(f.category == Category.SPAM for f in scan(raw))
    with pytest.raises(ValidationError):
        ScannerSettings(symbols={"NO_SUCH_RULE": 1.0})
    for zone in ({"zone": "bl.test", "codes": {"10.0.0.2": 1.0}}, {"zone": " "}):
        with pytest.raises(ValidationError):
            RulesSettings(dnsbl_zones=[zone])


def test_per_domain_policy_applies() -> None:
    domains = {
        "moat.test": DomainSettings(
            relay="127.0.0.1:2526", scanner={"symbols": {"HTML_ONLY": 3.0}}
        ),
        "example.test": DomainSettings(relay="127.0.0.1:2526"),
    }
    config = Settings(domains=domains)
    raw = email(text=None, html="<p>Hello there.</p>")
    for domain, score in (("moat.test", 3.0), ("example.test", 1.0)):
        message = parse("m1", raw, policy=config.scanner_policy(domain))
        found = asyncio.run(HeaderRulesCheck(config).check(message))
        assert [(f.symbol, f.score) for f in found] == [("HTML_ONLY", score)]


def test_malformed_input_never_raises() -> None:
    nasty = [
        b"",
        b"\x00\xff\xfe garbage without headers",
        b"From: <<<@@@>>>\r\nReply-To: ,,,@\r\nDate: Mon, 99 Foo 99999 99:99:99 +9999\r\n\r\nx",
        b"From: =?x-unknown?b?!!!?= <a@[300.1.1.1]>\r\nMessage-ID: <\r\n\r\nhttp://[::1/x",
        b"Content-Type: text/html; charset=no-such-charset\r\n\r\n<p style='font-size:'>"
        b"<a href='http://%zz%/'>x</a><a href='https://xn--zz/'>y</a><![CDATA[ <!bad",
        b"Content-Type: text/html" + b"; ;" * 300 + b"\r\n\r\n<font color=#ffff>x</font>",
        b"Received: junk; not a date\r\nDate: Mon, 02 Jun 9999 10:00:00 +0000\r\n\r\nx",
    ]
    for raw in nasty:
        found = scan(raw)
        assert all(f.category == Category.SPAM for f in found), raw[:40]


# --- helpers: URLs, skeletons, distances ----------------------------------------------------


def test_url_extraction() -> None:
    html = (
        '<a href="https://Sub.Example.CO.UK./a?b=1">x</a><img src="http://cdn.pics.test/i.png">'
        '<form action="https://xn--80ak6aa92e.com/login"></form>'
        '<a href="mailto:a@b.test">m</a><a href="#top">t</a> text www.plain.test/page.'
    )
    urls = extract_urls(parse("m1", email(text="see https://one.test/x, or (http://two.test)")))
    assert [u.host for u in urls] == ["one.test", "two.test"]
    urls = extract_urls(parse("m1", email(text=None, html=html)))
    assert [u.host for u in urls] == [
        "sub.example.co.uk",
        "cdn.pics.test",
        "\u0430\u0440\u0440\u04cf\u0435.com",  # Cyrillic "apple", decoded from IDNA
        "www.plain.test",
    ]
    assert url_domains(urls) == ["example.co.uk", "pics.test", urls[2].host, "plain.test"]
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("co.uk") is None and registrable_domain("192.0.2.1.") is None
    backslash = parse_url("http://evil.test\\@moat.test/")
    assert backslash is not None and backslash.host == "evil.test"
    assert parse_url("javascript:alert(1)") is None and parse_url("http://[::1") is None
    assert is_ip_literal("3221225985") and not is_ip_literal("3221225985.test")
    assert (
        len(
            extract_urls(
                parse("m1", email(text=" ".join(f"http://h{i}.test" for i in range(50)))), 10
            )
        )
        == 10
    )


def test_skeleton_and_edit_distance() -> None:
    assert skeleton("ex\u0430mple.test") == skeleton("example.test")
    assert skeleton("paypaI.com") == skeleton("paypal.com") == skeleton("paypa1.com")
    assert skeleton("rnoat.test") == skeleton("moat.test") == skeleton("m0at.test")
    assert skeleton("\U0001d426\U0001d428\U0001d41a\U0001d42d.test") == skeleton("moat.test")
    assert skeleton("boat.test") != skeleton("moat.test")
    assert edit_distance("example", "exmaple", 2) == 1  # a swap counts one
    assert edit_distance("moat", "mooat", 2) == 1
    assert edit_distance("example", "sample", 2) == 2
    assert edit_distance("example", "totally-different", 2) == 3  # stopped early
    long = Domain.of("longexample.test")
    assert long is not None and (long.label, long.suffix) == ("longexample", "test")
    rules = RulesSettings()

    def compare(host: str) -> str | None:
        candidate = Domain.of(host)
        assert candidate is not None and long is not None
        return lookalike(candidate, long, rules)

    assert compare("www.lnogexampel.test") == "LOOKALIKE_DOMAIN"  # two swaps
    assert compare("onlongexample.test") is None  # the name whole, and more
    assert compare("longexamples.test") == "LOOKALIKE_DOMAIN"
    assert compare("mail.longexample.test") is None


# --- reputation -----------------------------------------------------------------------------


@pytest.fixture
def dns() -> Iterator[FakeDNS]:
    with FakeDNS(failing={"160.69.2.81.broken.bl.test"}) as server:
        yield server


def reputation_settings(server_port: int, **rules: Any) -> Settings:
    return settings(
        dns=DnsSettings(nameservers=["127.0.0.1"], port=server_port, timeout=2.0),
        scanner={"rules": rules},
    )


def reputation(config: Settings, raw: bytes = b"", client: str = "81.2.69.160") -> list[Finding]:
    raw = raw or email()
    message = parse(
        "m1", raw, MessageEnvelope(client_address=client), config.scanner_policy("moat.test")
    )
    return asyncio.run(ReputationCheck(config).check(message))


ZEN = {
    "zone": "zen.bl.test",
    "codes": {"127.0.0.2": 4.0, "127.0.0.4": 3.5, "127.0.0.10": 0.0},
}


def test_dnsbl_listed_unlisted_and_codes(dns: FakeDNS) -> None:
    dns.set("160.69.2.81.zen.bl.test", "A", ["127.0.0.2", "127.0.0.4"])
    dns.set("161.69.2.81.zen.bl.test", "A", ["127.0.0.10"])  # a code weighted 0: ignored
    dns.set("162.69.2.81.zen.bl.test", "A", ["127.0.0.3"])  # not in codes: the zone's weight
    config = reputation_settings(dns.port, dnsbl_zones=[ZEN])
    found = reputation(config)
    assert [(f.symbol, f.score, f.category) for f in found] == [
        ("RBL_ZEN_BL_TEST", 7.5, Category.SPAM)
    ]
    assert "81.2.69.160" in found[0].detail and "127.0.0.4" in found[0].detail
    assert reputation(config, client="81.2.69.161") == []
    assert [(f.symbol, f.score) for f in reputation(config, client="81.2.69.162")] == [
        ("RBL_ZEN_BL_TEST", 3.0)
    ]
    assert reputation(config, client="81.2.69.163") == []  # NXDOMAIN: not listed


def test_dnsbl_ipv6_and_addresses_not_looked_up(dns: FakeDNS) -> None:
    ip = "2a00:1450:4001:80b::200e"
    name = reversed_ip(ipaddress.ip_address(ip))
    assert name == "e.0.0.2.0.0.0.0.0.0.0.0.0.0.0.0.b.0.8.0.1.0.0.4.0.5.4.1.0.0.a.2"
    dns.set(f"{name}.zen.bl.test", "A", ["127.0.0.2"])
    config = reputation_settings(dns.port, dnsbl_zones=[{**ZEN, "symbol": "RCVD_IN_ZEN"}])
    assert [(f.symbol, f.score) for f in reputation(config, client=ip)] == [("RCVD_IN_ZEN", 4.0)]
    mapped = reputation(config, client="::ffff:81.2.69.160")
    assert mapped == []  # asked as 160.69.2.81 (IPv4), which is not listed here
    assert ("160.69.2.81.zen.bl.test", "A") in dns.queries
    before = len(dns.queries)
    for client in ("127.0.0.1", "10.1.2.3", "192.168.0.9", "::1", "fe80::1", "", "not-an-ip"):
        assert reputation(config, client=client) == [], client
    assert len(dns.queries) == before  # none of them was asked


def test_uri_blocklist_domains_bounded_and_ours_skipped(dns: FakeDNS) -> None:
    dns.set("bad.test.uribl.test", "A", ["127.0.0.2"])
    dns.set("bad.test.surbl.test", "A", ["127.0.0.24"])  # bits 8 and 16
    links = " ".join(
        ["http://www.bad.test/win", "https://moat.test/ok", "https://x.mail.moat.test/"]
        + [f"http://site{i}.test/" for i in range(30)]
    )
    surbl = {"zone": "surbl.test", "bitmask": True, "codes": {"127.0.0.8": 2.0, "127.0.0.16": 3.0}}
    config = reputation_settings(
        dns.port, uribl_zones=[{"zone": "uribl.test"}, surbl], max_uri_domains=5
    )
    found = {f.symbol: f for f in reputation(config, email(text=links), client="")}
    assert {s: f.score for s, f in found.items()} == {
        "URIBL_URIBL_TEST": 3.0,
        "URIBL_SURBL_TEST": 5.0,
    }
    assert found["URIBL_URIBL_TEST"].detail.startswith("uribl.test: bad.test")
    asked = [name for name, _ in dns.queries]
    assert not any("moat.test" in name for name in asked)
    assert len(asked) == 5 * 2  # five domains, two zones
    assert "www.bad.test.uribl.test" not in asked  # the registrable domain is asked


def test_blocklist_failures_are_info_never_failures(dns: FakeDNS) -> None:
    dns.set("160.69.2.81.zen.bl.test", "A", ["127.0.0.2"])
    dns.set("160.69.2.81.quota.bl.test", "A", ["127.255.255.254"])  # "public resolver" error
    zones = [ZEN, {"zone": "broken.bl.test"}, {"zone": "quota.bl.test"}]
    found = reputation(reputation_settings(dns.port, dnsbl_zones=zones))
    by_symbol = {f.symbol: f for f in found}
    assert set(by_symbol) == {"RBL_ZEN_BL_TEST", "DNSBL_TEMPFAIL"}
    tempfail = by_symbol["DNSBL_TEMPFAIL"]
    assert tempfail.category == Category.INFO and tempfail.score == 0
    assert "broken.bl.test" in tempfail.detail and "quota.bl.test: refused" in tempfail.detail


def test_blocklist_timeouts_are_skipped_concurrently() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # answers nothing
        silent.bind(("127.0.0.1", 0))
        zones = [{"zone": f"z{i}.bl.test"} for i in range(6)]
        config = reputation_settings(
            silent.getsockname()[1], dnsbl_zones=zones, uribl_zones=zones, dns_timeout=0.3
        )
        started = time.monotonic()
        found = reputation(config, email(text="http://a.test/ http://b.test/"))
        elapsed = time.monotonic() - started
    assert [(f.symbol, f.category) for f in found] == [("DNSBL_TEMPFAIL", Category.INFO)]
    assert "z5.bl.test: timed out" in found[0].detail
    assert elapsed < 1.5  # 18 lookups of 0.3 s each, at once


def test_no_zones_no_lookups(dns: FakeDNS) -> None:
    assert reputation(reputation_settings(dns.port)) == []
    assert dns.queries == []


def test_both_checks_are_registered_and_run_clean() -> None:
    config = settings()
    checks = build_checks(config)
    names = {check.name for check in checks}
    assert {"headers", "reputation"} <= names
    ours = [c for c in checks if c.name in ("headers", "reputation")]
    message = parse("m1", email(), policy=config.scanner.model_copy())
    found = asyncio.run(run_checks(ours, message, timeout=5))
    assert symbols(found) == {"HEADERS_NONE", "REPUTATION_NONE"}


# --- the corpus: every sampled message handled without an exception -------------------------


def corpus_sample() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    sample: list[Path] = []
    for folder in ("spamassassin/ham", "spamassassin/spam"):
        sample.extend(sorted((CORPUS / folder).iterdir())[::40])
    sample.extend(p for p in sorted((CORPUS / "mime-fixtures").rglob("*")) if p.is_file())
    return sample


def test_corpus_sample_never_raises() -> None:
    files = corpus_sample()
    if not files:
        pytest.skip(f"no corpus at {CORPUS}")
    check = HeaderRulesCheck(settings())
    for path in files:
        message: ParsedMessage = parse(path.name, path.read_bytes())
        check.findings(message)
        extract_urls(message)


def test_the_text_url_pattern_finds_what_the_plain_case_insensitive_one_does() -> None:
    chars = r"""[^\s<>"'`{}|\\^\[\]\x00-\x1f]"""
    reference = re.compile(
        rf"(?i)\b(?:https?://\[[0-9a-f:.%]{{2,64}}\]{chars}*|(?:https?://|www\.){chars}+)"
    )
    fragments = ["http", "HTTPS", "httP\u017f", "www", "WwW", "w", "h", "://", ":/", ".", "["]
    fragments += ["]", "::1", "Fe8", "%", "x", " ", "\u00e9", "_", "-"]
    samples = fragment_strings(fragments, 20_000, seed=5, longest=12)
    samples += ["http://[::1]x", "HTTP://[FE80::1%25eth0]/a", "http://[zz", "xwww.a", "_http://y"]
    assert sum(bool(reference.findall(s)) for s in samples) > 300  # the samples do hold URLs
    for sample in samples:
        found = [m.group(0) for m in urls._TEXT_URL.finditer(sample)]
        assert found == [m.group(0) for m in reference.finditer(sample)], sample
