"""ARC (RFC 8617): the ValiMail arc_test_suite validation scenarios, their keys served by a real
DNS server on loopback, through the auth check; and the DMARC override for trusted sealers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from moat.model import Finding, MessageEnvelope, VerdictName
from moat.settings import DnsSettings, Settings
from services.scanner.checks.auth import AuthCheck
from services.scanner.checks.auth_arc import _said_pass
from services.scanner.checks.base import parse
from services.scanner.verdict import decide
from tests.support.fakedns import FakeDNS

SUITE = Path(
    "/work/shared/corpus/auth-test-vectors/arc_test_suite/tests/arc-draft-validation-tests.yml"
)
pytestmark = pytest.mark.skipif(not SUITE.is_file(), reason="ARC test suite not present")


def _load() -> tuple[dict[str, Any], dict[str, str]]:
    """Every scenario of the suite's documents (named ``<document>/<scenario>``), and the
    TXT records they resolve (the same keys in each document)."""
    scenarios: dict[str, Any] = {}
    records: dict[str, str] = {}
    if not SUITE.is_file():
        return scenarios, records
    for number, document in enumerate(yaml.safe_load_all(SUITE.read_text())):
        for name, scenario in (document.get("tests") or {}).items():
            scenarios[f"{number}/{name}"] = scenario
        for name, value in (document.get("txt-records") or {}).items():
            records[name] = " ".join(str(value).split())
    return scenarios, records


SCENARIOS, RECORDS = _load()
SUITE_MESSAGE = "0/cv_pass_i1_1"  # sealed by example.org, From d1.example.org, AAR dmarc=pass


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDNS]:
    zone: dict[str, dict[str, list[str]]] = {name: {"TXT": [v]} for name, v in RECORDS.items()}
    # The author domain asks for rejection, and has no SPF for the list's server.
    zone["_dmarc.d1.example.org"] = {"TXT": ["v=DMARC1; p=reject"]}
    zone["d1.example.org"] = {"TXT": ["v=spf1 -all"]}
    with FakeDNS(zone) as server:
        yield server


def settings(dns: FakeDNS, trusted: list[str] | None = None) -> Settings:
    auth: dict[str, Any] = {"arc_trusted_sealers": trusted or []}
    return Settings(
        dns=DnsSettings(nameservers=["127.0.0.1"], port=dns.port, timeout=2),
        domains={"dmarc.org": {"relay": "127.0.0.1:2526", "scanner": {"auth": auth}}},
    )


def scan(config: Settings, raw: bytes) -> list[Finding]:
    envelope = MessageEnvelope(
        mail_from="list-bounces@lists.example.org",
        rcpt_tos=("arc@dmarc.org",),
        client_address="198.51.100.9",
        helo="lists.example.org",
    )
    policy = config.scanner_policy("dmarc.org")
    parsed = parse("01ARC", raw, envelope, policy, "dmarc.org")
    return asyncio.run(AuthCheck(config).check(parsed))


def raw_of(name: str) -> bytes:
    text = SCENARIOS[name]["message"] or ""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def arc_result(findings: list[Finding]) -> str:
    results = next(f.detail for f in findings if f.symbol == "AUTH_RESULTS")
    for part in results.split("; "):
        if part.startswith("arc="):
            return part.removeprefix("arc=")
    return "none"


# Three scenarios leave cv empty: chains that carry cv=fail themselves, which RFC 8617 5.2
# makes a failed chain.
EXPECTED = {"Pass": "pass", "Fail": "fail", "None": "none", "": "fail"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_suites_validation_scenarios(dns: FakeDNS, name: str) -> None:
    expected = EXPECTED[str(SCENARIOS[name]["cv"] or "").strip()]
    assert arc_result(scan(settings(dns), raw_of(name))) == expected, name


def test_suite_scenarios_include_passes_and_failures() -> None:
    outcomes = [str(s["cv"]).strip() for s in SCENARIOS.values()]
    assert outcomes.count("Pass") >= 5 and outcomes.count("Fail") >= 20


def test_dmarc_reject_after_a_trusted_sealer_is_not_quarantined(dns: FakeDNS) -> None:
    raw = raw_of(SUITE_MESSAGE)
    untrusted = settings(dns)
    found = scan(untrusted, raw)
    symbols = {f.symbol for f in found}
    assert {"DMARC_REJECT", "ARC_PASS"} <= symbols, symbols
    assert decide(found, untrusted.scanner_policy("dmarc.org")).verdict == VerdictName.POLICY

    trusted = settings(dns, ["example.org"])
    found = scan(trusted, raw)
    symbols = {f.symbol for f in found}
    assert {"DMARC_FAIL_ARC_TRUSTED", "ARC_TRUSTED"} <= symbols, symbols
    assert "DMARC_REJECT" not in symbols
    verdict = decide(found, trusted.scanner_policy("dmarc.org"))
    assert verdict.verdict == VerdictName.CLEAN, verdict


def test_a_trusted_sealer_whose_chain_fails_is_not_believed(dns: FakeDNS) -> None:
    raw = raw_of(SUITE_MESSAGE).replace(b"This is a test message.", b"Send money now.")
    found = scan(settings(dns, ["example.org"]), raw)
    symbols = {f.symbol for f in found}
    assert {"DMARC_REJECT", "ARC_FAIL"} <= symbols, symbols


def test_only_the_sealer_named_is_trusted(dns: FakeDNS) -> None:
    found = scan(settings(dns, ["example.com", "xample.org"]), raw_of(SUITE_MESSAGE))
    assert "DMARC_REJECT" in {f.symbol for f in found}


@pytest.mark.parametrize(
    ("results", "believed"),
    [
        ("spf=pass; dkim=pass; dmarc=pass", True),
        ("spf=pass; dkim=pass; dmarc=fail", False),  # DMARC said no at the sealer: no
        ("spf=fail; dkim=pass", True),  # no DMARC there: an aligned-or-not DKIM pass
        ("spf=fail; dkim=fail", False),
    ],
)
def test_what_the_trusted_sealer_saw(results: str, believed: bool) -> None:
    # The seal covers the AAR, so a suite message cannot be edited to say "fail" and still
    # validate: this checks the reading of the sealer's ARC-Authentication-Results itself.
    raw = f"ARC-Authentication-Results: i=1; lists.example.org; {results}\r\n\r\n".encode()
    assert _said_pass(raw, 1) is believed
    assert _said_pass(raw, 2) is False  # another instance's results are not read


def test_arc_can_be_turned_off(dns: FakeDNS) -> None:
    config = Settings(
        dns=DnsSettings(nameservers=["127.0.0.1"], port=dns.port, timeout=2),
        domains={
            "dmarc.org": {
                "relay": "127.0.0.1:2526",
                "scanner": {"auth": {"arc": False, "arc_trusted_sealers": ["example.org"]}},
            }
        },
    )
    found = scan(config, raw_of(SUITE_MESSAGE))
    assert "DMARC_REJECT" in {f.symbol for f in found}
    assert arc_result(found) == "none"
