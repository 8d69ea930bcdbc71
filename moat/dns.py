"""DNS for the checks (SPF, DKIM, DMARC, ARC, blocklists): one async resolver, short timeouts,
and dnspython's own cache (``dns.resolver.LRUCache``), configured from ``dns`` in settings.
Tests point it at a DNS server on loopback.

The cache keeps each answer for the TTL its zone gave it (the smallest TTL of the answer's
records), no longer; negative answers (NXDOMAIN, no such record) for the SOA minimum the
zone's authority section carries (RFC 2308). A failure (timeout, SERVFAIL) is never cached,
so the next message asks again."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from moat.settings import DnsSettings


class DnsError(Exception):
    """The lookup failed for a reason other than "no such name/record" (timeout, SERVFAIL)."""


class Resolver:
    """``lookup`` answers a list of strings (A/AAAA addresses, TXT strings joined, MX hosts,
    PTR names), ``[]`` when the name or record does not exist, and raises ``DnsError`` when the
    answer could not be had."""

    def __init__(self, settings: DnsSettings) -> None:
        self.settings = settings
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            self._resolver.nameservers = list(settings.nameservers)
        self._resolver.port = settings.port
        self._resolver.lifetime = settings.timeout
        self._resolver.timeout = settings.timeout
        # Least recently used answers go first once ``cache_size`` are held; each expires
        # by its own TTL.
        self.cache = dns.resolver.LRUCache(settings.cache_size)
        self._resolver.cache = self.cache

    async def lookup(self, name: str, rdtype: str) -> list[str]:
        qname, qtype = name.lower().rstrip(".") + ".", rdtype.upper()
        try:
            answer = await self._resolver.resolve(qname, qtype, search=False)
            return [_text(rdata, qtype) for rdata in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsError(f"{qtype} {qname}: {type(exc).__name__}") from exc
        except dns.exception.DNSException as exc:
            raise DnsError(f"{qtype} {qname}: {exc}") from exc


def _text(rdata: object, rdtype: str) -> str:
    if rdtype == "TXT":
        strings = getattr(rdata, "strings", ())
        return b"".join(strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return str(getattr(rdata, "exchange", "")).rstrip(".")
    return str(rdata).rstrip(".")
