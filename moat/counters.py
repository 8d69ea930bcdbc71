"""Counters and short-lived marks shared by the ingress replicas: Redis when configured, else
(or while Redis is unreachable) a store in the process.

Three primitives cover the session limits and greylisting:

* ``join``/``leave``: the members of a set that expire on their own (the open connections of a
  client; an entry of a replica that died goes away after ``ttl`` instead of counting forever);
* ``hit``: a counter over a window that starts at its first event and lasts ``window`` seconds,
  as Postfix's anvil counts rates (no boundary where a burst is split in two);
* ``get``/``put``: a value with a time to live (greylisting's first-seen times and passes).

A Redis fault never fails a session: the store logs it once, answers from the process until
``retry`` seconds have passed, then tries Redis again.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Protocol

log = logging.getLogger(__name__)


class CounterStore(Protocol):
    async def join(self, key: str, member: str, ttl: float) -> int:
        """Add ``member`` to the set ``key`` for ``ttl`` seconds; the set's size after."""
        ...

    async def leave(self, key: str, member: str) -> None: ...

    async def hit(self, key: str, window: float, amount: int = 1) -> int:
        """Add ``amount`` to the counter ``key``; its value in the current window after."""
        ...

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        """Store ``value`` for ``ttl`` seconds (if ``only_new``, only when ``key`` has none);
        whether it was stored."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """The in-process store: one replica's view, lost on restart."""

    def __init__(self, clock: Any = time.monotonic, max_entries: int = 200_000) -> None:
        self._clock = clock
        # A flood from many addresses (a botnet) must not grow the process without bound:
        # past this many keys in a map, the ones closest to expiry go first.
        self._max_entries = max_entries
        self._sets: dict[str, dict[str, float]] = {}
        self._counters: dict[str, tuple[float, int]] = {}
        self._values: dict[str, tuple[float, str]] = {}
        self._operations = 0

    def _sweep(self) -> None:
        # Drop what expired now and then, so a flood of addresses cannot grow the maps forever.
        self._operations += 1
        if self._operations % 4096 and not self._crowded():
            return
        now = self._clock()
        for key, members in list(self._sets.items()):
            for member, expiry in list(members.items()):
                if expiry <= now:
                    del members[member]
            if not members:
                del self._sets[key]
        for key, (expiry, _) in list(self._counters.items()):
            if expiry <= now:
                del self._counters[key]
        for key, (expiry, _) in list(self._values.items()):
            if expiry <= now:
                del self._values[key]
        for entries in (self._counters, self._values):
            if len(entries) > self._max_entries:
                keep = self._max_entries * 3 // 4
                order = sorted(entries, key=lambda key: entries[key][0])
                for key in order[: len(entries) - keep]:
                    del entries[key]
        if len(self._sets) > self._max_entries:
            latest = {key: max(members.values()) for key, members in self._sets.items()}
            order = sorted(latest, key=latest.__getitem__)
            for key in order[: len(self._sets) - self._max_entries * 3 // 4]:
                del self._sets[key]

    def _crowded(self) -> bool:
        limit = self._max_entries
        return len(self._values) > limit or len(self._counters) > limit or len(self._sets) > limit

    async def join(self, key: str, member: str, ttl: float) -> int:
        self._sweep()
        now = self._clock()
        members = self._sets.setdefault(key, {})
        for old, expiry in list(members.items()):
            if expiry <= now:
                del members[old]
        members[member] = now + ttl
        return len(members)

    async def leave(self, key: str, member: str) -> None:
        members = self._sets.get(key)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._sets[key]

    async def hit(self, key: str, window: float, amount: int = 1) -> int:
        self._sweep()
        now = self._clock()
        expiry, count = self._counters.get(key, (0.0, 0))
        if expiry <= now:
            expiry, count = now + window, 0
        count += amount
        self._counters[key] = (expiry, count)
        return count

    async def get(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        self._sweep()
        if only_new and await self.get(key) is not None:
            return False
        self._values[key] = (self._clock() + ttl, value)
        return True

    async def close(self) -> None:
        pass


class RedisStore:
    """The shared store. Each primitive is one round trip (a pipeline in a transaction)."""

    def __init__(self, url: str, prefix: str, timeout: float = 0.5) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._prefix = prefix

    async def join(self, key: str, member: str, ttl: float) -> int:
        now = time.time()
        name = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now)
            pipe.zadd(name, {member: now + ttl})
            pipe.zcard(name)
            pipe.expire(name, max(1, int(ttl) + 1))
            results = await pipe.execute()
        return int(results[2])

    async def leave(self, key: str, member: str) -> None:
        await self._redis.zrem(self._prefix + key, member)

    async def hit(self, key: str, window: float, amount: int = 1) -> int:
        name = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            # The window starts at the first event: the key is made with its expiry, and
            # INCRBY keeps that expiry.
            pipe.set(name, 0, px=max(1, int(window * 1000)), nx=True)
            pipe.incrby(name, amount)
            results = await pipe.execute()
        return int(results[1])

    async def get(self, key: str) -> str | None:
        value = await self._redis.get(self._prefix + key)
        return None if value is None else str(value)

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        stored = await self._redis.set(
            self._prefix + key, value, px=max(1, int(ttl * 1000)), nx=only_new
        )
        return bool(stored)

    async def close(self) -> None:
        await self._redis.aclose()


class FallbackStore:
    """Redis first; the process's own store while Redis fails (logged once per outage)."""

    def __init__(self, primary: CounterStore, retry: float = 30.0, clock: Any = time.monotonic):
        self.primary = primary
        self.fallback = MemoryStore(clock)
        self._retry = retry
        self._clock = clock
        self._down_until: float | None = None

    def _usable(self) -> bool:
        if self._down_until is None:
            return True
        if self._clock() >= self._down_until:
            self._down_until = None
            log.info("counter store: trying Redis again")
            return True
        return False

    def _failed(self, error: Exception) -> None:
        if self._down_until is None:
            log.warning(
                "counter store: Redis unavailable (%s); counting in this process for %.0fs",
                error or type(error).__name__,
                self._retry,
            )
        self._down_until = self._clock() + self._retry

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._usable():
            try:
                return await getattr(self.primary, name)(*args, **kwargs)
            except Exception as error:  # redis.RedisError, OSError, timeouts: all an outage
                self._failed(error)
        return await getattr(self.fallback, name)(*args, **kwargs)

    async def join(self, key: str, member: str, ttl: float) -> int:
        return int(await self._call("join", key, member, ttl))

    async def leave(self, key: str, member: str) -> None:
        # Also from the fallback: the member may have joined there during an outage.
        await self.fallback.leave(key, member)
        await self._call("leave", key, member)

    async def hit(self, key: str, window: float, amount: int = 1) -> int:
        return int(await self._call("hit", key, window, amount))

    async def get(self, key: str) -> str | None:
        value = await self._call("get", key)
        return None if value is None else str(value)

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        return bool(await self._call("put", key, value, ttl, only_new=only_new))

    async def close(self) -> None:
        try:
            await self.primary.close()
        except Exception as error:
            log.debug("counter store: closing Redis: %s", error)


def build_store(
    redis_url: str | None, prefix: str, retry: float = 30.0, timeout: float = 0.5
) -> CounterStore:
    """Redis (with the in-process fallback) when ``redis_url`` is set, else the process's."""
    if not redis_url:
        return MemoryStore()
    return FallbackStore(RedisStore(redis_url, prefix, timeout), retry)


def new_member() -> str:
    """A name for one connection in a shared set, unique across replicas."""
    return uuid.uuid4().hex
