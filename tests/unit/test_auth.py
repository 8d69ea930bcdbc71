"""Sender authentication (SPF, DKIM, DMARC) against a real DNS server on loopback, with DKIM
signatures made here with a test RSA key, and public test vectors from the shared corpus."""

from __future__ import annotations

import asyncio
import base64
import os
import tarfile
import time
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from moat.model import Category, Finding, MessageEnvelope, VerdictName
from moat.settings import DnsSettings, Settings
from services.scanner.checks import build_checks, parse
from services.scanner.checks.auth import AuthCheck
from services.scanner.checks.auth_dmarc import (
    aligned,
    disposition,
    dns_name,
    org_domain,
    parse_record,
)
from services.scanner.verdict import decide
from tests.support.fakedns import FakeDNS

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
VECTORS = CORPUS / "auth-test-vectors"

GOOD_IP = "192.0.2.10"  # in example.org's SPF record
BAD_IP = "203.0.113.66"  # in nobody's
SPF = "v=spf1 ip4:192.0.2.0/24 -all"


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    """A test RSA key: the private key (PEM) and its DKIM key record."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def dns(key: tuple[bytes, str]) -> Iterator[FakeDNS]:
    record = key[1]
    zone: dict[str, dict[str, list[str]]] = {
        "example.org": {"TXT": [SPF, "google-site-verification=x"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject; rua=mailto:d@example.org"]},
        "sel._domainkey.example.org": {"TXT": [record]},
        "sel._domainkey.mail.example.org": {"TXT": [record]},
        "sel._domainkey.other.test": {"TXT": [record]},
        "other.test": {"TXT": ["v=spf1 -all"]},
        "soft.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 ~all"]},
        "_dmarc.soft.test": {"TXT": ["v=DMARC1; p=none"]},
        "quarantine.test": {"TXT": [SPF]},
        "_dmarc.quarantine.test": {"TXT": ["v=DMARC1; p=quarantine; adkim=s"]},
        "sel._domainkey.news.quarantine.test": {"TXT": [record]},
        "mx.helo.test": {"TXT": ["v=spf1 ip4:198.51.100.7 -all"]},
        # SPF that needs several lookups: include, a, mx
        "multi.test": {"TXT": ["v=spf1 include:_spf.multi.test mx -all"], "MX": ["mx.multi.test"]},
        "_spf.multi.test": {"TXT": ["v=spf1 a:out.multi.test -all"]},
        "out.multi.test": {"A": ["198.51.100.20"]},
        "mx.multi.test": {"A": ["198.51.100.25"]},
        "_dmarc.ours.test": {"TXT": ["v=DMARC1; p=none"]},
        "ours.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "sel._domainkey.revoked.test": {"TXT": ["v=DKIM1; k=rsa; p="]},
        "_dmarc.flaky.test": {"TXT": ["v=DMARC1; p=reject"]},
    }
    with FakeDNS(
        zone, failing={"broken.test", "_dmarc.broken.test", "sel._domainkey.flaky.test"}
    ) as server:
        yield server


def settings(dns: FakeDNS, **scanner: Any) -> Settings:
    domains = {"ours.test": {"relay": "127.0.0.1:2526", "scanner": scanner}} if scanner else {}
    domains = domains or {"ours.test": {"relay": "127.0.0.1:2526"}}
    return Settings(
        dns=DnsSettings(nameservers=["127.0.0.1"], port=dns.port, timeout=2), domains=domains
    )


def message(sender: str = "alice@example.org", body: str = "Hello Bob.\r\n") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: bob@ours.test\r\nSubject: lunch\r\n"
        f"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n{body}"
    ).encode()


def sign(raw: bytes, key: tuple[bytes, str], domain: str = "example.org") -> bytes:
    header: bytes = dkim.sign(
        raw, b"sel", domain.encode(), key[0], include_headers=[b"from", b"to", b"subject"]
    )
    return header + raw


def scan(
    config: Settings,
    raw: bytes,
    mail_from: str = "alice@example.org",
    ip: str = GOOD_IP,
    helo: str = "mx.example.org",
    check: AuthCheck | None = None,
) -> list[Finding]:
    envelope = MessageEnvelope(
        mail_from=mail_from, rcpt_tos=("bob@ours.test",), client_address=ip, helo=helo
    )
    policy = config.scanner_policy("ours.test")
    parsed = parse("01TEST", raw, envelope, policy, "ours.test")
    return asyncio.run((check or AuthCheck(config)).check(parsed))


def results(findings: list[Finding]) -> str:
    return next(f.detail for f in findings if f.symbol == "AUTH_RESULTS")


def symbols(findings: list[Finding]) -> set[str]:
    return {f.symbol for f in findings} - {"AUTH_RESULTS"}


def by_symbol(findings: list[Finding], symbol: str) -> Finding:
    return next(f for f in findings if f.symbol == symbol)


def test_all_pass_aligned(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    findings = scan(settings(dns), sign(message(), key))
    assert results(findings) == (
        "spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org header.s=sel; "
        "dmarc=pass header.from=example.org"
    )
    assert symbols(findings) == {"SPF_PASS", "DKIM_VALID_ALIGNED", "DMARC_PASS"}
    # Aligned authentication counts for the mail; an SPF pass alone earns nothing.
    assert {f.symbol: (f.category, f.score) for f in findings if f.symbol != "AUTH_RESULTS"} == {
        "SPF_PASS": (Category.INFO, 0.0),
        "DKIM_VALID_ALIGNED": (Category.SPAM, -1.0),
        "DMARC_PASS": (Category.SPAM, -1.0),
    }
    verdict = decide(findings, settings(dns).scanner)
    assert verdict.verdict == VerdictName.CLEAN and verdict.score == -2.0


def test_spf_fail_under_p_reject_is_a_policy_verdict(dns: FakeDNS) -> None:
    config = settings(dns)
    findings = scan(config, message(), ip=BAD_IP)
    assert results(findings) == (
        "spf=fail smtp.mailfrom=example.org; dkim=none; "
        "dmarc=fail (p=reject dis=reject) header.from=example.org"
    )
    assert by_symbol(findings, "SPF_FAIL").score == 2.0
    reject = by_symbol(findings, "DMARC_REJECT")
    assert reject.category == Category.POLICY and reject.score == 10.0
    assert decide(findings, config.scanner).verdict == VerdictName.POLICY


def test_a_domain_can_make_dmarc_reject_a_spam_score(dns: FakeDNS) -> None:
    config = settings(dns, auth={"dmarc_reject": "spam"}, symbols={"DMARC_REJECT": 4.0})
    reject = by_symbol(scan(config, message(), ip=BAD_IP), "DMARC_REJECT")
    assert reject.category == Category.SPAM and reject.score == 4.0


def test_tampered_body_fails_dkim(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    signed = sign(message(), key).replace(b"Hello Bob.", b"Hello Eve.")
    findings = scan(settings(dns), signed, ip=BAD_IP)
    assert "dkim=fail (body hash mismatch) header.d=example.org header.s=sel" in results(findings)
    assert by_symbol(findings, "DKIM_INVALID").score == 0.1
    assert "DMARC_REJECT" in symbols(findings)


def test_unaligned_dkim_with_aligned_spf_pass(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    findings = scan(settings(dns), sign(message(), key, domain="other.test"))
    assert results(findings) == (
        "spf=pass smtp.mailfrom=example.org; dkim=pass header.d=other.test header.s=sel; "
        "dmarc=pass header.from=example.org"
    )
    # ...and the same signature without SPF: a valid signature, but not the From domain's
    findings = scan(settings(dns), sign(message(), key, domain="other.test"), ip=BAD_IP)
    assert {"DKIM_VALID", "SPF_FAIL", "DMARC_REJECT"} <= symbols(findings)


def test_relaxed_and_strict_alignment(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    # relaxed (the default): a subdomain's signature aligns with its organisational domain
    findings = scan(settings(dns), sign(message(), key, domain="mail.example.org"), ip=BAD_IP)
    assert "DMARC_PASS" in symbols(findings)
    # adkim=s: it does not; p=quarantine gives a spam score, not a policy verdict
    raw = sign(message("news@quarantine.test"), key, domain="news.quarantine.test")
    findings = scan(settings(dns), raw, mail_from="bounce@other.test")
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=quarantine.test" in results(
        findings
    )
    quarantine = by_symbol(findings, "DMARC_QUARANTINE")
    assert quarantine.category == Category.SPAM and quarantine.score == 5.0


def test_softfail_and_p_none(dns: FakeDNS) -> None:
    findings = scan(settings(dns), message("carol@soft.test"), "carol@soft.test", ip=BAD_IP)
    assert results(findings) == (
        "spf=softfail smtp.mailfrom=soft.test; dkim=none; "
        "dmarc=fail (p=none dis=none) header.from=soft.test"
    )
    assert by_symbol(findings, "SPF_SOFTFAIL").score == 1.0
    assert by_symbol(findings, "DMARC_FAIL").score == 1.0
    assert decide(findings, settings(dns).scanner).verdict == VerdictName.CLEAN


def test_no_records_at_all(dns: FakeDNS) -> None:
    findings = scan(settings(dns), message("dan@nowhere.test"), "dan@nowhere.test")
    assert results(findings) == (
        "spf=none smtp.mailfrom=nowhere.test; dkim=none; dmarc=none header.from=nowhere.test"
    )
    assert symbols(findings) == set()


def test_null_sender_uses_the_helo_name(dns: FakeDNS) -> None:
    raw = message("mailer-daemon@mx.helo.test")
    passed = scan(settings(dns), raw, mail_from="", ip="198.51.100.7", helo="mx.helo.test")
    assert results(passed).startswith("spf=pass smtp.helo=mx.helo.test;")
    failed = scan(settings(dns), raw, mail_from="", ip=BAD_IP, helo="mx.helo.test")
    assert results(failed).startswith("spf=fail smtp.helo=mx.helo.test;")


def test_spf_with_include_a_and_mx(dns: FakeDNS) -> None:
    config = settings(dns)
    raw = message("eve@multi.test")
    for ip, expected in (("198.51.100.20", "pass"), ("198.51.100.25", "pass"), (BAD_IP, "fail")):
        findings = scan(config, raw, "eve@multi.test", ip=ip)
        assert results(findings).startswith(f"spf={expected} smtp.mailfrom=multi.test;"), ip


def test_dns_failure_is_temperror_not_a_check_failure(dns: FakeDNS) -> None:
    findings = scan(settings(dns), message("frank@broken.test"), "frank@broken.test")
    assert results(findings) == (
        "spf=temperror smtp.mailfrom=broken.test; dkim=none; "
        "dmarc=temperror header.from=broken.test"
    )
    assert symbols(findings) == {"SPF_TEMPERROR", "DMARC_TEMPERROR"}
    assert all(f.category == Category.INFO for f in findings)


def test_dkim_key_problems(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    config = settings(dns)
    signed = sign(message(), key)
    forged = signed.replace(b"Subject: lunch", b"Subject: invoice")  # a signed header changed
    assert "dkim=fail (bad signature) header.d=example.org" in results(scan(config, forged))
    cases = {
        "nokey.test": "dkim=permerror (no key) header.d=nokey.test",
        "revoked.test": "dkim=permerror (bad key) header.d=revoked.test",
        "flaky.test": "dkim=temperror (key lookup failed) header.d=flaky.test",
    }
    for domain, expected in cases.items():
        raw = sign(message(f"a@{domain}"), key, domain=domain)
        findings = scan(config, raw, mail_from="", ip=BAD_IP, helo="mx.other.test")
        assert expected in results(findings), domain
    # an aligned signature whose key could not be fetched might have passed: temperror
    assert "dmarc=temperror header.from=flaky.test" in results(findings)
    assert {"DKIM_TEMPERROR", "DMARC_TEMPERROR"} <= symbols(findings)
    assert "DMARC_REJECT" not in symbols(findings)


def test_forwarded_message_passes_dmarc_by_its_signature(
    dns: FakeDNS, key: tuple[bytes, str]
) -> None:
    # A forwarder relays the message unchanged from its own address: SPF fails for the
    # original sender, the signature survives, and DMARC passes through DKIM.
    original = sign(message(), key)
    forwarded = b"Received: from mx.example.org by forwarder.test; Mon, 2 Jun 2025\r\n" + original
    findings = scan(settings(dns), forwarded, ip=BAD_IP, helo="forwarder.test")
    assert results(findings) == (
        "spf=fail smtp.mailfrom=example.org; dkim=pass header.d=example.org header.s=sel; "
        "dmarc=pass header.from=example.org"
    )
    assert decide(findings, settings(dns).scanner).verdict == VerdictName.CLEAN


def test_mail_from_our_own_domain_must_authenticate(dns: FakeDNS) -> None:
    findings = scan(settings(dns), message("ceo@ours.test"), "ceo@ours.test", ip=BAD_IP)
    assert by_symbol(findings, "FROM_OWN_DOMAIN_UNAUTH").score == 3.0
    passed = scan(settings(dns), message("ceo@ours.test"), "ceo@ours.test")
    assert "FROM_OWN_DOMAIN_UNAUTH" not in symbols(passed)


def test_disabled_and_crafted_input(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    assert scan(settings(dns, auth={"enabled": False}), message()) == []
    only_dkim = settings(dns, auth={"spf": False, "dmarc": False})
    assert results(scan(only_dkim, sign(message(), key))) == (
        "dkim=pass header.d=example.org header.s=sel"
    )
    # A selector no DNS name can hold, a From without a domain, an unusable client address:
    # findings, never an exception and never temperror.
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=a b\\c; h=from; bh=x; b=y\r\n"
    raw = bad + b"From: nobody\r\nSubject: \xff\xfe\r\n\r\nbody\r\n"
    findings = scan(settings(dns), raw, mail_from="x@", ip="not-an-ip")
    assert results(findings) == (
        'dkim=permerror (malformed signature) header.d=example.org header.s="ab\\\\c"; '
        "dmarc=permerror (no From domain)"
    )


def test_warm_cache_makes_no_queries_and_measures(dns: FakeDNS, key: tuple[bytes, str]) -> None:
    config = settings(dns)
    check = AuthCheck(config)
    raw = sign(message(), key)
    scan(config, raw, check=check)  # cold: fills the resolver's cache
    before = len(dns.queries)
    runs = 30
    started = time.perf_counter()
    for _ in range(runs):
        assert "DMARC_PASS" in symbols(scan(config, raw, check=check))
    elapsed_ms = (time.perf_counter() - started) * 1000 / runs
    assert len(dns.queries) == before
    print(f"auth check, warm DNS cache: {elapsed_ms:.2f} ms per message")


def test_registered_in_build_checks(dns: FakeDNS) -> None:
    assert "auth" in [check.name for check in build_checks(settings(dns))]


# --- DMARC pieces ---------------------------------------------------------------------------


def test_dmarc_records_and_organisational_domains() -> None:
    record = parse_record("v=DMARC1; p=quarantine; sp=reject; adkim=s; pct=150")
    assert record is not None
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == (
        "quarantine",
        "reject",
        "s",
        "r",
        100,
    )
    assert parse_record("p=reject; v=DMARC1") is None  # v= must come first
    assert parse_record("v=spf1 -all") is None
    lenient = parse_record("v=DMARC1; p=bogus")
    assert lenient is not None and lenient.p == "none"
    assert org_domain("a.b.example.co.uk") == "example.co.uk"
    assert aligned("mail.example.co.uk", "example.co.uk", "r")
    assert not aligned("other.co.uk", "example.co.uk", "r")
    assert not aligned("mail.example.org", "example.org", "s")
    sampled = {disposition("reject", 50, f"id{i}") for i in range(200)}
    assert sampled == {"reject", "quarantine"}
    assert disposition("quarantine", 0, "x") == "none"
    assert dns_name("Exämple.org.") == "xn--exmple-cua.org"
    assert dns_name("a b.example.org") is None and dns_name("x" * 64 + ".org") is None


# --- public test vectors --------------------------------------------------------------------


def pem_to_record(pem: bytes) -> str:
    public = serialization.load_pem_public_key(pem)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "k=rsa; p=" + base64.b64encode(der).decode()


@pytest.mark.skipif(not VECTORS.is_dir(), reason="the shared corpus is not beside the checkout")
def test_public_vectors_gmail_and_rfc8463() -> None:
    gmail = VECTORS / "mimekit-dkim/UnitTests/TestData/dkim"
    rfc = VECTORS / "dkimpy/dkim/tests/data"
    zone = {
        "20120113._domainkey.gmail.com": {
            "TXT": [pem_to_record((gmail / "gmail.pub").read_bytes())]
        },
        "_dmarc.gmail.com": {"TXT": ["v=DMARC1; p=none; sp=quarantine"]},
        # RFC 8463 appendix A: the Ed25519 key, and dkimpy's RSA test key for the second one
        "brisbane._domainkey.football.example.com": {
            "TXT": ["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]
        },
        "test._domainkey.football.example.com": {"TXT": [(rfc / "test.txt").read_text().strip()]},
    }
    with FakeDNS(zone) as server:
        config = settings(server)
        raw = (gmail / "gmail.msg").read_bytes()
        findings = scan(config, raw, "jeff.stedfast@gmail.com", ip=BAD_IP)
        assert "dkim=pass header.d=gmail.com header.s=20120113" in results(findings)
        assert "dmarc=pass header.from=gmail.com" in results(findings)
        tampered = scan(config, raw.replace(b"Testing", b"Tasting", 1), "", ip="")
        assert results(tampered).startswith("dkim=fail")
        findings = scan(config, (rfc / "rfc6376.signed.msg").read_bytes(), "", ip="")
        assert results(findings) == (
            "dkim=pass header.d=football.example.com header.s=brisbane; "
            "dkim=pass header.d=football.example.com header.s=test; "
            "dmarc=none header.from=football.example.com"
        )


# --- the corpus: every message goes through without raising ---------------------------------


def corpus(step: int) -> Iterator[tuple[str, bytes]]:
    """Every ``step``-th message of the shared corpus, in a fixed order."""
    files = sorted(
        p
        for folder in ("spamassassin", "mime-fixtures", "auth-test-vectors")
        for p in (CORPUS / folder).rglob("*")
        if p.is_file() and p.name != "README.md"
    )
    for path in files[::step]:
        yield str(path), path.read_bytes()
    with tarfile.open(CORPUS / "phishing_pot" / "phishing-sample2500.tar.gz", mode="r|gz") as tar:
        for index, member in enumerate(m for m in tar if m.isfile()):
            handle = tar.extractfile(member)
            if index % step == 0 and handle is not None:
                yield member.name, handle.read()


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not beside the checkout")
def test_corpus_never_raises() -> None:
    """A sample by default; MOAT_AUTH_FULL_CORPUS=1 runs every message (about a minute)."""
    step = 1 if os.environ.get("MOAT_AUTH_FULL_CORPUS") else 40
    counts: dict[str, int] = {}
    with FakeDNS({"example.org": {"TXT": [SPF]}}) as server:
        config = settings(server)
        check = AuthCheck(config)

        async def run() -> int:
            total = 0
            for name, raw in corpus(step):
                envelope = MessageEnvelope(
                    mail_from=_return_path(raw),
                    rcpt_tos=("bob@ours.test",),
                    client_address=GOOD_IP,
                    helo="mx.example.org",
                )
                parsed = parse(name, raw, envelope, config.scanner_policy("ours.test"))
                try:
                    findings = await check.check(parsed)
                except Exception as exc:
                    raise AssertionError(f"{name}: {exc!r}") from exc
                assert findings[0].symbol == "AUTH_RESULTS" and "\n" not in findings[0].detail
                for finding in findings:
                    counts[finding.symbol] = counts.get(finding.symbol, 0) + 1
                total += 1
            return total

        started = time.perf_counter()
        total = asyncio.run(run())
        elapsed = time.perf_counter() - started
    print(f"auth corpus: {total} messages in {elapsed:.1f} s: {sorted(counts.items())}")
    assert total > 200 if step > 1 else total > 8000
    assert counts["AUTH_RESULTS"] == total


def _return_path(raw: bytes) -> str:
    for line in raw.split(b"\n", 200)[:200]:
        if line.lower().startswith(b"return-path:"):
            address = parseaddr(line[12:].decode("ascii", "replace").strip())[1]
            return address if "@" in address else ""
    return ""


ONE_CLICK = (
    b"List-Unsubscribe: <https://example.org/u/1>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
)


def test_one_click_unsubscribe_counts_only_under_an_aligned_signature(
    dns: FakeDNS, key: tuple[bytes, str]
) -> None:
    config = settings(dns)
    signed = scan(config, sign(ONE_CLICK + message(), key))
    assert by_symbol(signed, "LIST_ONECLICK").score < 0
    # The same fields without a signature, or under another domain's, earn nothing.
    assert "LIST_ONECLICK" not in symbols(scan(config, ONE_CLICK + message()))
    other = scan(config, sign(ONE_CLICK + message(), key, "other.test"))
    assert "DKIM_VALID" in symbols(other) and "LIST_ONECLICK" not in symbols(other)
    # Only the RFC 8058 value is one-click.
    lookalike = ONE_CLICK.replace(b"=One-Click", b"=Yes")
    assert "LIST_ONECLICK" not in symbols(scan(config, sign(lookalike + message(), key)))
