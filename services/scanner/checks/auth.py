"""Sender authentication: SPF, DKIM and DMARC, reported as an RFC 8601 Authentication-Results
value (finding ``AUTH_RESULTS``) and scored by the policy in ``scanner.auth``.

SPF, the DKIM key lookups and the DMARC record lookups run concurrently through the project's
resolver (``moat.dns``: its nameservers, timeout and cache); DKIM hashing runs in a thread.
A DNS failure is a ``temperror`` result and an informational finding, never a failure of the
check: a sender's broken DNS must not hold our mail. Only a bug raises.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses

from moat.dns import DnsError, Resolver
from moat.model import Category, Finding
from moat.settings import AuthSettings, Settings
from moat.symbols import SymbolTable
from services.scanner.checks.auth_arc import SEALED, ArcResult, sealers, validate
from services.scanner.checks.auth_dkim import SIGNED, DkimResult, Key, signatures, verify
from services.scanner.checks.auth_dmarc import (
    DmarcRecord,
    Policy,
    aligned,
    disposition,
    dns_name,
    load_public_suffixes,
    org_domain,
    select_record,
)
from services.scanner.checks.auth_spf import SpfResult, check_spf
from services.scanner.checks.base import ParsedMessage

log = logging.getLogger(__name__)

MAX_FROM_DOMAINS = 5  # distinct From domains evaluated (a message should have one)


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    domain: str  # the From domain
    policy: Policy | None = None  # what the domain asks for failing mail (p= or sp=)
    disposition: Policy = "none"  # what we apply to it (after pct sampling)
    aligned: bool = False  # SPF or DKIM passed aligned (also without a DMARC record)

    @property
    def severity(self) -> int:
        """How bad, to pick the outcome that speaks for several From domains."""
        if self.result == "fail":
            return {"reject": 6, "quarantine": 5}.get(self.disposition, 4)
        return {"temperror": 3, "permerror": 2, "none": 1}.get(self.result, 0)


class AuthCheck:
    """SPF for the client and envelope sender, every DKIM signature, the From domain's DMARC
    policy with alignment. Per-domain policy: ``message.policy.auth``."""

    name = "auth"

    def __init__(self, settings: Settings, resolver: Resolver | None = None) -> None:
        self.resolver = resolver or Resolver(settings.dns)
        load_public_suffixes()
        # Our protected domains, by organisational domain: mail "From" them that does not
        # authenticate is a classic impersonation (FROM_OWN_DOMAIN_UNAUTH).
        self.own_domains = frozenset(
            org_domain(name) for name in map(dns_name, settings.domains) if name is not None
        )

    async def check(self, message: ParsedMessage) -> list[Finding]:
        policy = message.policy.auth
        if not policy.enabled:
            return []
        envelope = message.envelope
        from_domains = _from_domains(message.message) if policy.dmarc else []
        spf_result, dkim_results, records = await asyncio.gather(
            self._spf(policy, envelope.client_address, envelope.mail_from, envelope.helo),
            self._dkim(policy, message.raw),
            asyncio.gather(*(self._dmarc_record(domain) for domain in from_domains)),
        )
        dmarc_results = [
            _evaluate_dmarc(domain, found, spf_result, dkim_results, message.message_id)
            for domain, found in zip(from_domains, records, strict=True)
        ]
        if policy.dmarc and not from_domains:
            dmarc_results.append(DmarcResult("permerror", ""))
        arc = await self._arc(policy, message.raw, dmarc_results)
        table = message.policy.symbol_table
        aligned_dkim = _aligned_dkim(dkim_results, from_domains)
        findings = [_results_finding(self.name, spf_result, dkim_results, dmarc_results, arc)]
        findings += _spf_findings(self.name, table, spf_result)
        findings += _dkim_findings(self.name, table, dkim_results, from_domains)
        findings += _dmarc_findings(self.name, table, dmarc_results, arc)
        findings += _arc_findings(self.name, table, arc)
        findings += _list_findings(self.name, table, message.message, aligned_dkim)
        findings += self._own_domain_findings(table, dmarc_results)
        return findings

    async def _spf(
        self, policy: AuthSettings, client: str, mail_from: str, helo: str
    ) -> SpfResult | None:
        if not policy.spf:
            return None
        try:
            async with asyncio.timeout(policy.spf_timeout):
                return await check_spf(self.resolver, client, mail_from, helo)
        except TimeoutError:
            identity = "mailfrom" if mail_from else "helo"
            domain = mail_from.rpartition("@")[2] if mail_from else helo
            return SpfResult("temperror", identity, domain.lower(), "timed out")

    async def _dkim(self, policy: AuthSettings, raw: bytes) -> list[DkimResult] | None:
        if not policy.dkim:
            return None
        if not SIGNED.search(raw):
            return []
        verifier, found = await asyncio.to_thread(
            signatures, raw, policy.min_key_bits, policy.max_signatures
        )
        names = sorted({name for s in found if (name := s.key_name) is not None})
        answers = await asyncio.gather(*(self._key(name) for name in names))
        keys = dict(zip(names, answers, strict=True))
        return await asyncio.to_thread(verify, verifier, found, keys)

    async def _arc(
        self, policy: AuthSettings, raw: bytes, dmarc_results: list[DmarcResult]
    ) -> ArcResult | None:
        """The ARC chain's result; validated only when it could matter or be recorded."""
        if not policy.arc or not SEALED.search(raw):
            return None
        names = await asyncio.to_thread(sealers, raw)
        answers = await asyncio.gather(*(self._key(name) for name in names))
        keys = dict(zip(names, answers, strict=True))
        trusted = frozenset(
            org_domain(name)
            for name in map(dns_name, policy.arc_trusted_sealers)
            if name is not None
        )
        return await asyncio.to_thread(validate, raw, keys, trusted, policy.min_key_bits)

    async def _key(self, name: str) -> Key:
        try:
            values = await self.resolver.lookup(name, "TXT")
        except DnsError as exc:
            return exc
        return values[0] if values else None

    async def _dmarc_record(self, domain: str) -> DmarcRecord | DnsError | None:
        """The policy for ``domain``: its own record, else its organisational domain's with
        the subdomain policy ``sp`` as ``p``. A DNS failure is returned, not raised."""
        try:
            record = select_record(await self.resolver.lookup(f"_dmarc.{domain}", "TXT"))
            if record is not None:
                return record
            org = org_domain(domain)
            if org == domain:
                return None
            inherited = select_record(await self.resolver.lookup(f"_dmarc.{org}", "TXT"))
        except DnsError as exc:
            return exc
        if inherited is None:
            return None
        return DmarcRecord(
            inherited.sp, inherited.sp, inherited.adkim, inherited.aspf, inherited.pct
        )

    def _own_domain_findings(self, table: SymbolTable, results: list[DmarcResult]) -> list[Finding]:
        for result in results:
            if (
                result.domain
                and org_domain(result.domain) in self.own_domains
                and not result.aligned
                and result.result != "temperror"
            ):
                return [
                    table.finding(
                        self.name,
                        "FROM_OWN_DOMAIN_UNAUTH",
                        f"From {result.domain}, one of our domains, but not authenticated",
                    )
                ]
        return []


def _from_domains(message: Message) -> list[str]:
    """The distinct domains of the From addresses (RFC 5322.From), read leniently."""
    values = [str(value) for name, value in message.raw_items() if name.lower() == "from"]
    domains: list[str] = []
    try:
        addresses = getaddresses(values)
    except Exception:  # the legacy parser on input it did not expect: no From domain
        return []
    for _name, address in addresses:
        local, at, domain = address.rpartition("@")
        name = dns_name(domain) if at and local else None
        if name is not None and name not in domains:
            domains.append(name)
    return domains[:MAX_FROM_DOMAINS]


def _evaluate_dmarc(
    domain: str,
    record: DmarcRecord | DnsError | None,
    spf_result: SpfResult | None,
    dkim_results: list[DkimResult] | None,
    message_id: str,
) -> DmarcResult:
    """RFC 7489 section 6.6.2: pass when SPF or a DKIM signature passed with an identifier
    aligned with the From domain, in the mode the record asks (relaxed without one)."""
    found = record if isinstance(record, DmarcRecord) else None
    aspf, adkim = (found.aspf, found.adkim) if found else ("r", "r")
    spf_aligned = spf_result is not None and aligned(spf_result.domain, domain, aspf)
    dkim_aligned = [r for r in dkim_results or () if aligned(r.domain, domain, adkim)]
    passed = (spf_aligned and spf_result is not None and spf_result.result == "pass") or any(
        r.result == "pass" for r in dkim_aligned
    )
    if isinstance(record, DnsError):
        return DmarcResult("temperror", domain, aligned=passed)
    if found is None:
        return DmarcResult("none", domain, aligned=passed)
    if passed:
        return DmarcResult("pass", domain, found.p, "none", aligned=True)
    # A temporary error on an aligned identifier could have been a pass: say so, not "fail".
    if (spf_aligned and spf_result is not None and spf_result.result == "temperror") or any(
        r.result == "temperror" for r in dkim_aligned
    ):
        return DmarcResult("temperror", domain, found.p)
    return DmarcResult("fail", domain, found.p, disposition(found.p, found.pct, message_id))


# --- findings -------------------------------------------------------------------------------


def _spf_findings(check: str, table: SymbolTable, result: SpfResult | None) -> list[Finding]:
    if result is None or result.result == "none":
        return []
    detail = f"SPF {result.result} for {result.identity} {result.domain}"
    return [table.finding(check, f"SPF_{result.result.upper()}", detail)]


def _dkim_findings(
    check: str, table: SymbolTable, results: list[DkimResult] | None, aligned_with: list[str]
) -> list[Finding]:
    """DKIM_VALID_ALIGNED when a passing signature's d= aligns (relaxed) with a From domain:
    that is evidence for the mail; an unaligned pass (any domain can sign) is only recorded."""
    if not results:
        return []
    passed = sorted({r.domain for r in results if r.result == "pass"})
    if passed:
        for domain in _aligned_dkim(results, aligned_with):
            return [table.finding(check, "DKIM_VALID_ALIGNED", f"signed by {domain}")]
        return [table.finding(check, "DKIM_VALID", f"signed by {passed[0]}")]
    if any(r.result == "temperror" for r in results):
        return [table.finding(check, "DKIM_TEMPERROR", "a DKIM key could not be looked up")]
    reasons = ", ".join(sorted({r.reason for r in results if r.reason}))
    return [table.finding(check, "DKIM_INVALID", f"no valid signature: {reasons}")]


def _dmarc_findings(
    check: str, table: SymbolTable, results: list[DmarcResult], arc: ArcResult | None
) -> list[Finding]:
    if not results:
        return []
    worst = max(results, key=lambda r: r.severity)
    if worst.result == "pass":
        return [table.finding(check, "DMARC_PASS", f"DMARC pass for {worst.domain}")]
    if worst.result == "temperror":
        return [
            table.finding(
                check, "DMARC_TEMPERROR", f"DMARC could not be evaluated for {worst.domain}"
            )
        ]
    if worst.result != "fail":
        return []
    detail = f"DMARC fail for {worst.domain} (p={worst.policy}, applied {worst.disposition})"
    if arc is not None and arc.trusted:
        # RFC 8617 section 7.2.1: a receiver may override a DMARC failure on the word of an
        # ARC chain it trusts (a list or forwarder that saw the mail authenticate).
        return [table.finding(check, "DMARC_FAIL_ARC_TRUSTED", f"{detail}; {arc.detail}")]
    if worst.disposition == "reject":
        return [table.finding(check, "DMARC_REJECT", detail)]
    if worst.disposition == "quarantine":
        return [table.finding(check, "DMARC_QUARANTINE", detail)]
    return [table.finding(check, "DMARC_FAIL", detail)]


def _arc_findings(check: str, table: SymbolTable, arc: ArcResult | None) -> list[Finding]:
    if arc is None:
        return []
    if arc.result == "pass":
        return [table.finding(check, "ARC_TRUSTED" if arc.trusted else "ARC_PASS", arc.detail)]
    return [table.finding(check, "ARC_FAIL", arc.detail)]


def _list_findings(
    check: str, table: SymbolTable, message: Message, dkim_domains: list[str]
) -> list[Finding]:
    """RFC 8058 one-click unsubscribe, believed only under a DKIM signature of the From
    domain (RFC 8058 section 4 asks the signature to cover both fields)."""
    names = {name.lower() for name, _ in message.raw_items()}
    if "list-unsubscribe-post" not in names or "list-unsubscribe" not in names:
        return []
    values = [str(v) for n, v in message.raw_items() if n.lower() == "list-unsubscribe-post"]
    if not any(v.strip().lower() == "list-unsubscribe=one-click" for v in values):
        return []
    if not dkim_domains:
        return []
    return [table.finding(check, "LIST_ONECLICK", f"one-click unsubscribe, {dkim_domains[0]}")]


# --- Authentication-Results (RFC 8601) -----------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")  # RFC 2045 token: no quoting needed


def _value(text: str) -> str:
    """A property value: a token as it is, anything else a quoted-string of printable ASCII
    (no CR/LF can reach the header delivery writes)."""
    if _TOKEN.fullmatch(text):
        return text
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(
    spf_result: SpfResult | None,
    dkim_results: list[DkimResult] | None,
    dmarc_results: list[DmarcResult],
) -> str:
    """The value after the authserv-id: ``spf=pass smtp.mailfrom=example.org; dkim=...``;
    ``none`` when nothing was evaluated. Methods not run are left out."""
    parts: list[str] = []
    if spf_result is not None:
        prop = "smtp.helo" if spf_result.identity == "helo" else "smtp.mailfrom"
        parts.append(f"spf={spf_result.result} {prop}={_value(spf_result.domain)}")
    if dkim_results is not None:
        if not dkim_results:
            parts.append("dkim=none")
        for r in dkim_results:
            text = f"dkim={r.result}" + (f" ({r.reason})" if r.reason else "")
            if r.domain:
                text += f" header.d={_value(r.domain)} header.s={_value(r.selector)}"
            parts.append(text)
    for d in dmarc_results:
        if not d.domain:
            parts.append("dmarc=permerror (no From domain)")
            continue
        comment = f" (p={d.policy} dis={d.disposition})" if d.result == "fail" else ""
        parts.append(f"dmarc={d.result}{comment} header.from={_value(d.domain)}")
    return "; ".join(parts) or "none"


def _results_finding(
    check: str,
    spf_result: SpfResult | None,
    dkim_results: list[DkimResult] | None,
    dmarc_results: list[DmarcResult],
    arc: ArcResult | None,
) -> Finding:
    value = authentication_results(spf_result, dkim_results, dmarc_results)
    if arc is not None:
        value = f"arc={arc.result}" if value == "none" else f"{value}; arc={arc.result}"
    return Finding(check=check, symbol="AUTH_RESULTS", category=Category.INFO, detail=value)


def _aligned_dkim(results: list[DkimResult] | None, from_domains: list[str]) -> list[str]:
    """Domains of passing DKIM signatures aligned (relaxed) with a From domain."""
    return sorted(
        {
            r.domain
            for r in results or ()
            if r.result == "pass" and any(aligned(r.domain, d, "r") for d in from_domains)
        }
    )
