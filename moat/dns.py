"""DNS for the checks (SPF, DKIM, DMARC, blocklists): one async resolver, short timeouts and a
small cache, configured from ``dns`` in settings. Tests point it at a DNS server on loopback."""

from __future__ import annotations

import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.resolver

from moat.settings import DnsSettings


class DnsError(Exception):
    """The lookup failed for a reason other than "no such name/record" (timeout, SERVFAIL)."""


class Resolver:
    """``lookup`` answers a list of strings (A/AAAA addresses, TXT strings joined, MX hosts,
    PTR names), ``[]`` when the name or record does not exist, and raises ``DnsError`` when the
    answer could not be had. Answers (including "none") are cached for ``cache_seconds``."""

    def __init__(self, settings: DnsSettings) -> None:
        self.settings = settings
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            self._resolver.nameservers = list(settings.nameservers)
        self._resolver.port = settings.port
        self._resolver.lifetime = settings.timeout
        self._resolver.timeout = settings.timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, list[str]]] = OrderedDict()

    async def lookup(self, name: str, rdtype: str) -> list[str]:
        key = (name.lower().rstrip("."), rdtype.upper())
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return cached[1]
        try:
            answer = await self._resolver.resolve(key[0] + ".", key[1], search=False)
            values = [_text(rdata, key[1]) for rdata in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            values = []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsError(f"{key[1]} {key[0]}: {type(exc).__name__}") from exc
        except dns.exception.DNSException as exc:
            raise DnsError(f"{key[1]} {key[0]}: {exc}") from exc
        self._cache[key] = (now + self.settings.cache_seconds, values)
        if len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)
        return values


def _text(rdata: object, rdtype: str) -> str:
    if rdtype == "TXT":
        strings = getattr(rdata, "strings", ())
        return b"".join(strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return str(getattr(rdata, "exchange", "")).rstrip(".")
    return str(rdata).rstrip(".")
