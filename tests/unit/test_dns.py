"""The checks' resolver against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import time

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


def test_answers_are_cached_for_their_ttl() -> None:
    """dnspython's cache: an answer is reused until its own TTL runs out, then asked again
    (and the zone's new value is seen); an answer with a long TTL stays cached meanwhile."""
    records = {"short.test": {"A": ["192.0.2.1"]}, "long.test": {"A": ["192.0.2.2"]}}
    with FakeDNS(records, ttls={"short.test": 2, "long.test": 3600}) as server:
        resolver = Resolver(DnsSettings(nameservers=["127.0.0.1"], port=server.port, timeout=2))

        def asked(name: str) -> int:
            return sum(1 for qname, _ in server.queries if qname == name)

        async def run() -> None:
            started = time.monotonic()
            assert await resolver.lookup("short.test", "A") == ["192.0.2.1"]
            assert await resolver.lookup("long.test", "A") == ["192.0.2.2"]
            server.set("short.test", "A", ["192.0.2.9"])  # the zone changes
            server.set("long.test", "A", ["192.0.2.8"])
            assert await resolver.lookup("short.test", "A") == ["192.0.2.1"]  # from the cache
            assert asked("short.test") == 1
            deadline = started + 10
            while asked("short.test") == 1 and time.monotonic() < deadline:
                answer = await resolver.lookup("short.test", "A")
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            assert asked("short.test") == 2, "never asked again"
            assert 1.5 <= elapsed <= 4, elapsed  # at its TTL of 2 s, not before
            assert answer == ["192.0.2.9"]
            # The long TTL's answer is still the cached one, not asked again.
            assert await resolver.lookup("long.test", "A") == ["192.0.2.2"]
            assert asked("long.test") == 1

        asyncio.run(run())


def test_the_cache_holds_at_most_cache_size_answers() -> None:
    records = {f"n{i}.test": {"A": [f"192.0.2.{i}"]} for i in range(1, 6)}
    with FakeDNS(records) as server:
        settings = DnsSettings(nameservers=["127.0.0.1"], port=server.port, cache_size=3)
        resolver = Resolver(settings)

        async def run() -> None:
            for i in range(1, 6):
                await resolver.lookup(f"n{i}.test", "A")
            assert len(resolver.cache.data) == 3
            before = len(server.queries)
            await resolver.lookup("n5.test", "A")  # recent: cached
            assert len(server.queries) == before
            await resolver.lookup("n1.test", "A")  # the oldest went first
            assert len(server.queries) == before + 1

        asyncio.run(run())


def test_a_failure_is_not_cached() -> None:
    with FakeDNS({}, failing={"flaky.test"}) as server:
        resolver = Resolver(DnsSettings(nameservers=["127.0.0.1"], port=server.port, timeout=1))

        async def run() -> None:
            with pytest.raises(DnsError):
                await resolver.lookup("flaky.test", "A")
            server.resolver.failing.clear()
            server.set("flaky.test", "A", ["192.0.2.7"])
            assert await resolver.lookup("flaky.test", "A") == ["192.0.2.7"]

        asyncio.run(run())
