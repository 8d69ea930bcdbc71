"""The counter stores (in process, Redis, the fallback between them) and greylisting's
rules in time, with a clock the tests move."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid

import pytest

from moat.counters import FallbackStore, MemoryStore, RedisStore
from moat.settings import GreylistSettings, Settings
from services.ingress.limits import Greylist
from tests.harness import ROOT, free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_memory_store_sets_counters_and_values_expire() -> None:
    clock = Clock()
    store = MemoryStore(clock)

    async def scenario() -> None:
        assert await store.join("c", "a", ttl=10) == 1
        assert await store.join("c", "b", ttl=10) == 2
        await store.leave("c", "a")
        assert await store.join("c", "a", ttl=10) == 2
        clock.now += 11  # both entries outlived their ttl (a replica that died)
        assert await store.join("c", "x", ttl=10) == 1
        assert await store.hit("r", window=60) == 1
        assert await store.hit("r", window=60) == 2
        clock.now += 59
        assert await store.hit("r", window=60) == 3  # the window began at the first hit
        clock.now += 2
        assert await store.hit("r", window=60) == 1
        assert await store.put("v", "1", ttl=5, only_new=True)
        assert not await store.put("v", "2", ttl=5, only_new=True)
        assert await store.get("v") == "1"
        clock.now += 6
        assert await store.get("v") is None

    run(scenario())


@pytest.fixture(scope="module")
def redis_url() -> str:
    subprocess.run([str(ROOT / "scripts" / "ensure-redis.sh")], check=True, capture_output=True)
    return "redis://127.0.0.1:6379/0"


def test_redis_store_shares_counts_between_replicas(redis_url: str) -> None:
    prefix = f"moat-test-{uuid.uuid4().hex}:"

    async def scenario() -> None:
        one, two = RedisStore(redis_url, prefix), RedisStore(redis_url, prefix)
        try:
            assert await one.join("c", "a", ttl=10) == 1
            assert await two.join("c", "b", ttl=10) == 2
            await one.leave("c", "b")
            assert await two.join("c", "c", ttl=10) == 2
            assert await one.hit("r", window=60) == 1
            assert await two.hit("r", window=60, amount=2) == 3
            assert await one.put("v", "x", ttl=10, only_new=True)
            assert not await two.put("v", "y", ttl=10, only_new=True)
            assert await two.get("v") == "x"
            assert await one.join("short", "a", ttl=0.01) == 1
            await asyncio.sleep(0.05)  # scores are times: an expired entry no longer counts
            assert await two.join("short", "b", ttl=10) == 1
        finally:
            await one.close()
            await two.close()

    run(scenario())


def test_fallback_serves_from_the_process_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "moat:", timeout=0.2)
    store = FallbackStore(dead, retry=30, clock=clock)
    caplog.set_level(logging.WARNING, logger="moat.counters")

    async def scenario() -> None:
        assert await store.join("c", "a", ttl=10) == 1
        assert await store.join("c", "b", ttl=10) == 2
        assert await store.hit("r", window=60) == 1
        clock.now += 31  # Redis is tried again, fails again: a second outage, a second line
        assert await store.hit("r", window=60) == 2
        await store.close()

    run(scenario())
    outages = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(outages) == 2


def greylist(clock: Clock, **settings: float) -> Greylist:
    return Greylist(GreylistSettings(enabled=True, **settings), MemoryStore(clock), clock)


def test_greylist_delay_window_and_memory() -> None:
    clock = Clock()
    grey = greylist(clock, delay=300, retry_window=3600, memory=86400)

    async def scenario() -> None:
        assert not await grey.admits("192.0.2.10", "a@x.test", "b@y.test")
        clock.now += 299
        assert not await grey.admits("192.0.2.10", "a@x.test", "b@y.test")  # too soon
        clock.now += 2
        # Another address of the same /24 is the same client (a sending pool).
        assert await grey.admits("192.0.2.77", "A@X.test", "b@y.test")
        # Auto-whitelist: the /24 now passes for any sender and recipient...
        assert await grey.admits("192.0.2.1", "new@z.test", "c@y.test")
        # ...but not another network.
        assert not await grey.admits("198.51.100.1", "a@x.test", "b@y.test")
        clock.now += 86401  # the memory ran out
        assert not await grey.admits("192.0.2.10", "a@x.test", "b@y.test")

    run(scenario())


def test_greylist_first_attempt_forgotten_after_the_retry_window() -> None:
    clock = Clock()
    grey = greylist(clock, delay=300, retry_window=3600)

    async def scenario() -> None:
        assert not await grey.admits("2001:db8::1", "a@x.test", "b@y.test")
        clock.now += 3601  # retried too late: a first attempt again
        assert not await grey.admits("2001:db8::2", "a@x.test", "b@y.test")  # same /64
        clock.now += 301
        assert await grey.admits("2001:db8::3", "a@x.test", "b@y.test")

    run(scenario())


def test_greylisting_per_domain_overrides_the_global_setting() -> None:
    domains = {
        "on.test": {"relay": "127.0.0.1:25", "greylist": True},
        "off.test": {"relay": "127.0.0.1:25", "greylist": False},
        "default.test": {"relay": "127.0.0.1:25"},
    }
    quiet = Settings(domains=domains)
    assert [quiet.greylists(d) for d in ("ON.test", "off.test", "default.test")] == [
        True,
        False,
        False,
    ]
    everywhere = Settings(domains=domains, greylist={"enabled": True})
    assert [everywhere.greylists(d) for d in ("on.test", "off.test", "default.test.")] == [
        True,
        False,
        True,
    ]


def test_memory_store_stays_bounded_under_a_flood_of_addresses() -> None:
    clock = Clock()
    store = MemoryStore(clock, max_entries=100)

    async def scenario() -> None:
        for i in range(1000):
            clock.now += 1
            await store.put(f"greet:192.0.2.{i}", "1", ttl=86400)
            await store.hit(f"mail:192.0.2.{i}", window=60)
            await store.join(f"conn:192.0.2.{i}", "m", ttl=3600)
        assert len(store._values) <= 100 and len(store._counters) <= 100
        assert len(store._sets) <= 100
        assert await store.get("greet:192.0.2.999") == "1"  # the newest stay

    run(scenario())
