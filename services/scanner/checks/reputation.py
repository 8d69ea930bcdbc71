"""Reputation: DNS blocklists for the connecting client's IP (DNSBL) and for the domains of the
links in the body (URI blocklists), as RFC 5782 describes them.

A DNSBL is asked ``<reversed octets>.<zone>`` (IPv6: 32 reversed nibbles), a URI list
``<registrable domain>.<zone>``; an A answer in 127.0.0.0/8 means listed, and the answer's code
may map to a weight (``codes`` of the zone in ``scanner.rules``). ``127.0.0.1`` and
``127.255.255.0/24`` are the lists' error answers (query refused, open resolver, over quota):
they are reported, never scored. A list that times out or fails gives an info finding
``DNSBL_TEMPFAIL`` and is skipped: a blocklist outage must not hold the mail. Loopback, private
and other non-global client addresses are not looked up. No zones are configured by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass

from moat.dns import DnsError, Resolver
from moat.model import Category, Finding
from moat.settings import BlocklistZone, RulesSettings, Settings
from moat.symbols import zone_symbol_name
from services.scanner.checks.base import ParsedMessage
from services.scanner.checks.urls import extract_urls, is_cheap, preload, url_domains

_LDH_NAME = re.compile(r"(?=.{1,200}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{2,63}")
_ERRORS = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.ip_address("127.0.0.1")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(value: str) -> IPAddress | None:
    """The client's address if it is a global one worth asking about; ``None`` otherwise."""
    value = value.strip().strip("[]")
    if value.lower().startswith("ipv6:"):
        value = value[5:]
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip if ip.is_global else None


def reversed_ip(ip: IPAddress) -> str:
    """``192.0.2.1`` → ``1.2.0.192``; IPv6 as its 32 nibbles, last first."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def dns_name(domain: str) -> str | None:
    """A domain as it can be asked in DNS (IDNA-encoded), ``None`` when it cannot be."""
    try:
        ascii_name = domain.encode("idna").decode("ascii").lower()
    except Exception:  # not a valid IDN
        return None
    return ascii_name if _LDH_NAME.fullmatch(ascii_name) else None


def zone_symbol(zone: BlocklistZone, prefix: str) -> str:
    return zone_symbol_name(zone.zone, zone.symbol, prefix)  # the table names it the same


def answer_weight(zone: BlocklistZone, answer: str) -> float:
    """The score of one listing answer: its code's weight, else the zone's."""
    if answer in zone.codes:
        return zone.codes[answer]
    if zone.bitmask and zone.codes:
        last = int(answer.rsplit(".", 1)[1])
        bits = [w for code, w in zone.codes.items() if int(code.rsplit(".", 1)[1]) & last]
        if bits:
            return sum(bits)
    return zone.weight


@dataclass(frozen=True)
class _Query:
    zone: BlocklistZone
    symbol: str
    subject: str  # the IP or domain asked about
    name: str  # the DNS name asked


@dataclass
class _Result:
    query: _Query
    listed: list[str]  # listing answers (127.x)
    error: str | None  # why the list could not answer


class ReputationCheck:
    """DNSBL for the client IP and URI blocklists for link domains (``scanner.rules``)."""

    name = "reputation"

    def __init__(self, settings: Settings, resolver: Resolver | None = None) -> None:
        self.resolver = resolver or Resolver(settings.dns)
        self.protected = tuple(settings.domains)
        preload()

    async def check(self, message: ParsedMessage) -> list[Finding]:
        rules = message.policy.rules
        queries = self._ip_queries(message, rules) + await self._uri_queries(message, rules)
        if not queries:
            return []
        results = await asyncio.gather(*(self._ask(q, rules.dns_timeout) for q in queries))
        return self._findings(results)

    @staticmethod
    def _ip_queries(message: ParsedMessage, rules: RulesSettings) -> list[_Query]:
        ip = client_ip(message.envelope.client_address) if rules.dnsbl_zones else None
        if ip is None:
            return []
        name = reversed_ip(ip)
        return [
            _Query(zone, zone_symbol(zone, "RBL_"), str(ip), f"{name}.{zone.zone}")
            for zone in rules.dnsbl_zones
        ]

    async def _uri_queries(self, message: ParsedMessage, rules: RulesSettings) -> list[_Query]:
        if not rules.uribl_zones or rules.max_uri_domains <= 0:
            return []
        if is_cheap(message):
            domains = self._domains(message, rules)
        else:
            domains = await asyncio.to_thread(self._domains, message, rules)
        return [
            _Query(zone, zone_symbol(zone, "URIBL_"), domain, f"{name}.{zone.zone}")
            for domain, name in domains
            for zone in rules.uribl_zones
        ]

    def _domains(self, message: ParsedMessage, rules: RulesSettings) -> list[tuple[str, str]]:
        """(domain, its DNS name) for the first ``max_uri_domains`` link domains not ours."""
        chosen: list[tuple[str, str]] = []
        for domain in url_domains(extract_urls(message, rules.max_urls)):
            if any(domain == p or domain.endswith("." + p) for p in self.protected):
                continue
            name = dns_name(domain)
            if name is not None:
                chosen.append((domain, name))
                if len(chosen) >= rules.max_uri_domains:
                    break
        return chosen

    async def _ask(self, query: _Query, timeout: float) -> _Result:
        try:
            answers = await asyncio.wait_for(self.resolver.lookup(query.name, "A"), timeout)
        except TimeoutError:
            return _Result(query, [], "timed out")
        except DnsError as exc:
            return _Result(query, [], str(exc))
        listed: list[str] = []
        errors: list[str] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                continue
            if address == _REFUSED or address in _ERRORS:
                errors.append(answer)
            elif address in _LOOPBACK:
                listed.append(answer)
        error = f"refused ({', '.join(errors)})" if errors and not listed else None
        return _Result(query, listed, error)

    def _findings(self, results: list[_Result]) -> list[Finding]:
        findings: list[Finding] = []
        tempfails: dict[str, str] = {}
        listings: dict[str, tuple[BlocklistZone, float, list[str]]] = {}
        for result in results:
            query = result.query
            if result.error is not None:
                tempfails.setdefault(query.zone.zone, f"{query.zone.zone}: {result.error}")
                continue
            if not result.listed:
                continue
            score = sum(answer_weight(query.zone, a) for a in sorted(set(result.listed)))
            if score == 0:
                continue  # only codes the operator chose to ignore
            zone, best, subjects = listings.get(query.symbol, (query.zone, 0.0, []))
            subjects.append(f"{query.subject} ({', '.join(sorted(set(result.listed)))})")
            listings[query.symbol] = (zone, max(best, score), subjects)
        for symbol, (zone, score, subjects) in listings.items():
            findings.append(
                Finding(
                    check=self.name,
                    symbol=symbol,
                    category=Category.SPAM,
                    score=score,
                    detail=f"{zone.zone}: {'; '.join(subjects)}"[:200],
                )
            )
        if tempfails:
            findings.append(
                Finding(
                    check=self.name,
                    symbol="DNSBL_TEMPFAIL",
                    category=Category.INFO,
                    detail="; ".join(tempfails.values())[:300],
                )
            )
        return findings
