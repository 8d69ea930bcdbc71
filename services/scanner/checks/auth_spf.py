"""SPF (RFC 7208) with pyspf's evaluator and the project's async resolver.

pyspf is synchronous and asks for DNS from inside its evaluation. Rather than park a thread on
every lookup, the evaluation is replayed: ``_Query.dns`` answers from a per-message table and,
for a name it does not have yet, aborts with ``_NeedLookup``; ``check_spf`` looks that name up
with ``moat.dns.Resolver`` (its settings, its cache), adds the answer and evaluates again. One
evaluation is tens of microseconds of pure Python and a record needs few lookups, so replaying
is cheap, runs on the event loop, and no thread ever waits on the network.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import spf  # type: ignore[import-untyped]

from moat.dns import DnsError, Resolver
from services.scanner.checks.auth_dmarc import dns_name

log = logging.getLogger(__name__)

RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"})
# RFC 7208's limits (10 lookup mechanisms, 10 MX names each, 2 void lookups) keep a real
# evaluation far below this; it only bounds a bug.
MAX_ROUNDS = 150

Answer = list[Any] | DnsError


class _NeedLookup(BaseException):
    """Raised through pyspf, which catches its own errors only, to ask for one lookup."""

    def __init__(self, name: str, qtype: str) -> None:
        super().__init__(name, qtype)
        self.name = name
        self.qtype = qtype


class _Query(spf.query):  # type: ignore[misc]
    """pyspf's query with DNS answered from ``table`` (filled in by ``check_spf``)."""

    def __init__(self, table: dict[tuple[str, str], Answer], ip: str, sender: str, helo: str):
        self._table = table
        super().__init__(ip, sender, helo, strict=True)

    def dns(
        self, name: Any, qtype: str, cnames: Any = None, ignore_void: bool = False
    ) -> list[Any]:
        # The same contract as pyspf's own: CNAMEs followed (the resolver does it), [] for no
        # data, void lookups counted, TempError on a DNS failure.
        ascii_name = dns_name(str(name))
        answer: Answer = []
        if ascii_name is not None:
            key = (ascii_name, qtype)
            if key not in self._table:
                raise _NeedLookup(*key)
            answer = self._table[key]
        if isinstance(answer, DnsError):
            raise spf.TempError(f"DNS {answer}")
        if not answer and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return answer


def _convert(values: list[str], qtype: str) -> list[Any]:
    """The resolver's strings in the shapes pyspf's DNS drivers return."""
    if qtype in ("TXT", "SPF"):
        return [(value.encode("utf-8"),) for value in values]
    if qtype == "MX":
        return [(0, host) for host in values]
    return list(values)


@dataclass(frozen=True)
class SpfResult:
    result: str  # pass, fail, softfail, neutral, none, permerror, temperror
    identity: str  # "mailfrom", or "helo" for the null sender
    domain: str  # the domain whose policy was evaluated
    explanation: str = ""


def client_ip(address: str) -> str | None:
    """The client's address as SPF wants it (IPv4-mapped IPv6 as IPv4), None if unusable."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


async def check_spf(resolver: Resolver, ip: str, mail_from: str, helo: str) -> SpfResult | None:
    """SPF for ``ip`` sending as ``mail_from`` (the HELO name when it is the null sender).
    None when there is nothing to check: no usable client address, or no identity at all."""
    address = client_ip(ip)
    if address is None or not (mail_from or helo):
        return None
    table: dict[tuple[str, str], Answer] = {}
    identity, domain = ("mailfrom" if mail_from else "helo"), ""
    for _ in range(MAX_ROUNDS):
        try:
            query = _Query(table, address, mail_from, helo)
            identity, domain = query.ident, str(query.o)
            result, _code, explanation = query.check()
        except _NeedLookup as need:
            try:
                values = await resolver.lookup(need.name, need.qtype)
            except DnsError as exc:
                table[(need.name, need.qtype)] = exc
            else:
                table[(need.name, need.qtype)] = _convert(values, need.qtype)
            continue
        except Exception as exc:  # pyspf on input it did not expect: an unusable identity
            log.info("SPF for %s from %s: %r", mail_from or helo, address, exc)
            return SpfResult("permerror", identity, domain, type(exc).__name__)
        if result not in RESULTS:
            result = "permerror"
        return SpfResult(result, identity, domain.lower(), str(explanation))
    log.warning("SPF for %s from %s needed over %d lookups", mail_from or helo, ip, MAX_ROUNDS)
    return SpfResult("permerror", identity, domain, "too many lookups")
