"""The checks' resolver against a real DNS server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from moat.dns import DnsError, Resolver
from moat.settings import DnsSettings
from tests.support.fakedns import FakeDNS


def test_lookups_cache_and_failures() -> None:
    records = {
        "example.test": {
            "TXT": ["v=spf1 ip4:192.0.2.0/24 -all", "x" * 600],
            "A": ["192.0.2.1"],
            "MX": ["mx.example.test"],
        },
    }
    with FakeDNS(records, failing={"broken.test"}) as server:
        resolver = Resolver(DnsSettings(nameservers=["127.0.0.1"], port=server.port, timeout=2))

        async def run() -> None:
            assert await resolver.lookup("example.test", "A") == ["192.0.2.1"]
            txt = await resolver.lookup("Example.TEST.", "TXT")
            assert "v=spf1 ip4:192.0.2.0/24 -all" in txt and "x" * 600 in txt  # joined strings
            assert await resolver.lookup("example.test", "MX") == ["mx.example.test"]
            assert await resolver.lookup("nothing.test", "A") == []  # NXDOMAIN
            assert await resolver.lookup("example.test", "AAAA") == []  # no such record
            with pytest.raises(DnsError):
                await resolver.lookup("broken.test", "A")
            before = len(server.queries)
            await resolver.lookup("example.test", "A")  # cached
            assert len(server.queries) == before

        asyncio.run(run())
