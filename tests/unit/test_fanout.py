"""The feedback.learned broadcast against the real RabbitMQ: every subscriber gets every notice,
a notice makes a replica merge what the store has, and a broadcast that cannot go out says so
instead of raising (the poll remains)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from moat.fanout import Fanout
from services.scanner.feedback import LearnedBroadcast
from tests.harness import rabbitmq_vhost


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with rabbitmq_vhost() as vhost:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def test_every_subscriber_gets_every_notice(url: str) -> None:
    async def scenario() -> None:
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        both = asyncio.Event()

        def keep(name: str) -> Any:
            async def handler(body: bytes) -> None:
                got[name].append(body)
                if len(got["a"]) == len(got["b"]) == 2:
                    both.set()

            return handler

        a, b = Fanout(url, "test.fanout", keep("a")), Fanout(url, "test.fanout", keep("b"))
        sender = Fanout(url, "test.fanout")  # publishes only: no queue of its own
        for fanout in (a, b, sender):
            fanout.start()
        try:
            for fanout in (a, b, sender):
                assert await fanout.wait_ready(10)
            assert await sender.publish(b"one") and await a.publish(b"two")
            await asyncio.wait_for(both.wait(), 10)
            assert sorted(got["a"]) == sorted(got["b"]) == [b"one", b"two"]
        finally:
            for fanout in (a, b, sender):
                await fanout.close()
        assert not await a.publish(b"after close")  # no connection: False, no exception

    asyncio.run(scenario())


class FakeClassifier:
    """Stands in for the classifier: its generation, and what a forced refresh finds."""

    def __init__(self, stored: int) -> None:
        self.generation = 0
        self.stored = stored
        self.refreshes = 0

    async def refresh(self, force: bool = False) -> bool:
        self.refreshes += 1
        self.generation = self.stored
        return True


def test_a_notice_of_a_newer_generation_makes_a_replica_merge(url: str) -> None:
    async def scenario() -> None:
        behind, current = FakeClassifier(stored=3), FakeClassifier(stored=3)
        current.generation = 3
        replicas = [LearnedBroadcast(url, behind), LearnedBroadcast(url, current)]  # type: ignore[arg-type]
        handled = [0]
        notices = asyncio.Condition()
        told = replicas[0].fanout.handler
        assert told is not None

        async def counting(body: bytes) -> None:
            await told(body)
            async with notices:
                handled[0] += 1
                notices.notify_all()

        replicas[0].fanout.handler = counting

        async def until(count: int) -> None:
            async with notices:
                await asyncio.wait_for(notices.wait_for(lambda: handled[0] >= count), 10)

        for replica in replicas:
            replica.start()
        try:
            for replica in replicas:
                assert await replica.fanout.wait_ready(10)
            assert await replicas[1].learned(3)
            await until(1)
            assert (behind.generation, behind.refreshes) == (3, 1)
            assert current.refreshes == 0  # told of what it has: nothing to read
            # A notice that is not ours is logged and ignored.
            assert await replicas[1].fanout.publish(b"not json")
            assert await replicas[1].fanout.publish(json.dumps({"generation": 3}).encode())
            await until(3)  # both handled: nothing new to merge
            assert behind.refreshes == 1
        finally:
            for replica in replicas:
                await replica.close()

    asyncio.run(scenario())
