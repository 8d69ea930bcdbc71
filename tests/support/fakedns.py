"""A real DNS server on loopback for tests (dnslib), serving records a test gives it. Stands
in for the internet's DNS, which tests never reach.

    with FakeDNS({"example.test": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"]}}) as dns:
        settings = DnsSettings(nameservers=["127.0.0.1"], port=dns.port)
"""

from __future__ import annotations

import threading
from typing import Any

from dnslib import AAAA, EDNS0, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

Records = dict[str, dict[str, list[str]]]


def _txt(value: str) -> TXT:
    # Long TXT values (DKIM keys) are split into 255-byte strings, as in real zones.
    data = value.encode()
    return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])


_RDATA = {"A": A, "AAAA": AAAA, "MX": lambda v: MX(v), "PTR": PTR, "TXT": _txt}


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: Records, failing: set[str], ttls: dict[str, int]) -> None:
        self.records = records
        self.failing = failing
        self.ttls = ttls
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=4096))  # EDNS0 asked, EDNS0 answered (RFC 6891 7)
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((name, qtype))
            if name in self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            entry = self.records.get(name)
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for value in entry.get(qtype, []):
            ttl = self.ttls.get(name, 60)
            reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=_RDATA[qtype](value), ttl=ttl))
        return reply


def _ignore(_line: str) -> None:
    """dnslib logs every query and answer to stdout by default."""


class FakeDNS:
    def __init__(
        self,
        records: Records | None = None,
        failing: set[str] | None = None,
        ttls: dict[str, int] | None = None,  # seconds per name; 60 for the rest
    ) -> None:
        normalised = {k.lower().rstrip("."): v for k, v in (records or {}).items()}
        ttl_by_name = {k.lower().rstrip("."): v for k, v in (ttls or {}).items()}
        self.resolver = _ZoneResolver(
            normalised, {f.lower() for f in failing or set()}, ttl_by_name
        )
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", logf=_ignore)
        self.server = DNSServer(self.resolver, port=0, address="127.0.0.1", logger=quiet)

    @property
    def port(self) -> int:
        return int(self.server.server.server_address[1])

    def set(self, name: str, rdtype: str, values: list[str]) -> None:
        with self.resolver.lock:
            self.resolver.records.setdefault(name.lower().rstrip("."), {})[rdtype] = values

    @property
    def queries(self) -> list[tuple[str, str]]:
        with self.resolver.lock:
            return list(self.resolver.queries)

    def __enter__(self) -> FakeDNS:
        self.server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
