"""Broadcasts between replicas: a fanout exchange on RabbitMQ that every subscriber gets every
message of, each through a queue of its own (exclusive, deleted with its connection).

Used for "the classifier learned something": the replica that learned a feedback row tells
every scanner, which merges the new weights at once instead of at its next poll. A broadcast
is a hint, never the only way: a replica that was disconnected when it went out still finds
the change at its next poll (``scanner.classifier.poll_interval``), so this runs on a
connection of its own and never holds up mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[None]]


class Fanout:
    def __init__(self, url: str, exchange: str, handler: Handler | None = None) -> None:
        self.url = url
        self.exchange_name = exchange
        self.handler = handler
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._ready.is_set()

    async def publish(self, body: bytes) -> bool:
        """Best effort: False (and a log line) when the broadcast could not go out."""
        exchange = self._exchange
        if exchange is None or not self._ready.is_set():
            log.info("fanout %s: not connected; replicas will poll", self.exchange_name)
            return False
        try:
            await exchange.publish(aio_pika.Message(body), routing_key="")
        except Exception as exc:
            log.info("fanout %s: publish failed (%s); replicas will poll", self.exchange_name, exc)
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._ready.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _run(self) -> None:
        delay = 0.2
        while True:
            lost = asyncio.Event()
            try:
                await self._open(lost)
                delay = 0.2
                await lost.wait()
                log.warning("fanout %s: connection lost; reconnecting", self.exchange_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fanout %s: %s; retrying in %.1fs", self.exchange_name, exc, delay)
            self._ready.clear()
            self._exchange = None
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
                self._connection = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _open(self, lost: asyncio.Event) -> None:
        connection = await aio_pika.connect(
            self.url, client_properties={"connection_name": f"moat {self.exchange_name}"}
        )
        self._connection = connection
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        if self.handler is not None:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            await queue.consume(self._on_message, no_ack=True)
        self._exchange = exchange
        self._ready.set()
        log.info("fanout %s: connected", self.exchange_name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self.handler is None:
            return
        try:
            await self.handler(message.body)
        except Exception:
            log.exception("fanout %s: handler failed", self.exchange_name)
