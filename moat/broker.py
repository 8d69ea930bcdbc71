"""The AMQP side of every service: one robust connection, confirmed publishing, and the consumer
base class that owns acknowledgement.

Acknowledgement rule: a consumer acks only after its work is committed (database written and the
next publish confirmed). A crash anywhere before that means redelivery, so every handler is
idempotent. Errors decide what happens next by their type:

- ``PoisonMessage``: the message can never succeed; it is marked ``failed`` and dead-lettered.
- anything else: transient; the message is returned to its queue after a short pause. The broker
  counts deliveries; on the last one allowed by ``x-delivery-limit`` the consumer marks it
  ``failed`` and dead-letters it itself, so the failure is recorded with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pamqp.commands import Basic
from pydantic import ValidationError

from moat.model import DeliveryRequest, ScanRequest, decode_body, encode_body
from moat.settings import BrokerSettings
from moat.topology import QueueSpec

log = logging.getLogger(__name__)


class Drop(Enum):
    """What a ``Broker.cycle`` visitor returns for a message to take out of the queue."""

    DROP = "drop"


DROP = Drop.DROP

Body = TypeVar("Body", ScanRequest, DeliveryRequest)
ConsumerCallback = Callable[[AbstractIncomingMessage], Awaitable[None]]


class PublishError(Exception):
    """The broker did not confirm a publish (nack, unroutable, timeout or connection lost)."""


class PoisonMessage(Exception):
    """Processing this message can never succeed; retrying would only repeat the failure."""


class Broker:
    """One AMQP connection per process, kept alive by ``run``: on loss it reconnects with
    backoff, declares the topology again and restarts every consumer. (We supervise the
    connection ourselves: aio-pika's robust connection did not reliably restore consumers after
    the broker went away and came back.)

    Publishing uses a channel with publisher confirms; each consumer has its own channel so each
    has its own prefetch."""

    def __init__(self, settings: BrokerSettings, topology: list[QueueSpec]) -> None:
        self.settings = settings
        self.topology = topology
        self._connection: AbstractConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._consumers: list[tuple[str, int, ConsumerCallback]] = []
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    async def connect(self, max_delay: float = 10.0) -> None:
        """Connect (waiting for the broker as long as it takes), then keep the connection up in
        the background."""
        await self._connect_with_retry(max_delay)
        self._supervisor = asyncio.create_task(self._supervise(max_delay))

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        self._ready.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _connect_with_retry(self, max_delay: float) -> None:
        delay = 0.2
        while True:
            try:
                await self._open()
                return
            except Exception as exc:
                log.warning("broker not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def _open(self) -> None:
        connection = await aio_pika.connect(
            self.settings.url.get_secret_value(),
            client_properties={"connection_name": "moat"},
            timeout=self.settings.publish_timeout,
        )
        try:
            publish_channel = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            for spec in self.topology:
                await publish_channel.declare_queue(
                    spec.name, durable=True, arguments=spec.arguments
                )
            for queue, prefetch, callback in self._consumers:
                await self._start_consumer(connection, queue, prefetch, callback)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        self._connection, self._publish_channel = connection, publish_channel
        self._ready.set()

    async def _supervise(self, max_delay: float) -> None:
        while True:
            await self._lost.wait()
            self._ready.clear()
            with contextlib.suppress(Exception):
                if self._connection is not None:
                    await self._connection.close()
            log.warning("lost the broker connection; reconnecting")
            await self._connect_with_retry(max_delay)
            log.warning("broker connection restored")

    async def publish(
        self,
        queue: str,
        body: ScanRequest | DeliveryRequest,
        *,
        expiration_ms: int | None = None,
    ) -> None:
        """Publish persistently and wait for the broker's confirm; raise PublishError if the
        message is not known to be safe in its queue within ``publish_timeout``."""
        message = aio_pika.Message(
            encode_body(body),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=body.message_id,
            expiration=expiration_ms / 1000 if expiration_ms is not None else None,
        )
        timeout = self.settings.publish_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
                assert self._publish_channel is not None
                confirmation = await self._publish_channel.default_exchange.publish(
                    message, routing_key=queue, mandatory=True
                )
        except TimeoutError as exc:
            raise PublishError(f"no confirm from the broker within {timeout}s") from exc
        except Exception as exc:  # connection lost, channel closed, message returned
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(f"broker refused the message: {confirmation!r}")

    async def cycle(
        self,
        queue: str,
        visit: Callable[[AbstractIncomingMessage], Awaitable[dict[str, str] | None | Drop]],
        limit: int,
    ) -> int:
        """Take each message now in ``queue`` once (at most ``limit``), let ``visit`` see it, and
        put it back at the end with the headers ``visit`` returns added: a way to read a queue
        without consuming it. Republished with a confirm before the original is acked, so a
        crash leaves a duplicate, never a gap. When ``visit`` returns ``DROP`` the message is
        acked and not put back. Returns how many ``visit`` returned headers for that were not
        there before."""
        if self._connection is None or not self._ready.is_set():
            return 0
        changed = 0
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            declared = await channel.declare_queue(queue, passive=True)
            count = min(int(declared.declaration_result.message_count or 0), limit)
            for _ in range(count):
                message = await declared.get(no_ack=False, fail=False)
                if message is None:
                    break
                extra = await visit(message)
                if isinstance(extra, Drop):
                    await message.ack()
                    continue
                if extra and any((message.headers or {}).get(k) != v for k, v in extra.items()):
                    changed += 1
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        message.body,
                        headers={**(message.headers or {}), **(extra or {})},
                        content_type=message.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=message.message_id,
                    ),
                    routing_key=queue,
                    mandatory=True,
                )
                await message.ack()
        finally:
            await channel.close()
        return changed

    async def consume(self, queue: str, prefetch: int, callback: ConsumerCallback) -> None:
        """Consume ``queue`` now and again after every reconnection."""
        self._consumers.append((queue, prefetch, callback))
        if self._connection is not None and self._ready.is_set():
            await self._start_consumer(self._connection, queue, prefetch, callback)

    @staticmethod
    async def _start_consumer(
        connection: AbstractConnection, queue: str, prefetch: int, callback: ConsumerCallback
    ) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await channel.get_queue(queue, ensure=False)
        await declared.consume(callback)


class Consumer(ABC, Generic[Body]):
    """Base class of the scanner's and delivery's workers; a subclass writes ``handle``."""

    queue: str
    body_type: type[Body]

    def __init__(self, broker: Broker, prefetch: int) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    @abstractmethod
    async def handle(self, body: Body) -> None:
        """Do the work and commit it; raise to have the message retried or dead-lettered."""

    @abstractmethod
    async def mark_failed(self, body: Body, reason: str) -> None:
        """Record that this message is dead-lettered (status ``failed``) and why."""

    async def start(self) -> None:
        await self.broker.consume(self.queue, self.prefetch, self._on_message)

    async def stop(self, timeout: float = 15.0) -> None:
        """Take no new messages and let the ones in hand finish, so that a stop does not cut
        an SMTP transaction or a commit in half (that would mean a duplicate later)."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "%d %s messages still in hand at stop; the broker will redeliver them",
                self._in_flight,
                self.queue,
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await message.nack(requeue=True)
            return
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._process(message)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            body = decode_body(message.body)
            if not isinstance(body, self.body_type):
                raise PoisonMessage(f"a {body.kind} request has no place in queue {self.queue}")
        except (ValidationError, PoisonMessage) as exc:
            log.error("dead-lettering an unreadable message from %s: %s", self.queue, exc)
            await message.reject(requeue=False)
            return

        deliveries = _delivery_count(message) + 1
        last_chance = deliveries >= self.broker.settings.delivery_limit
        try:
            await self.handle(body)
        except PoisonMessage as exc:
            await self._dead_letter(message, body, f"poison: {exc}")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if last_chance:
                log.exception("%s %s failed %d times", self.queue, body.message_id, deliveries)
                await self._dead_letter(message, body, f"failed {deliveries} times; last: {reason}")
            else:
                log.warning(
                    "%s %s failed (attempt %d), will retry: %s",
                    self.queue,
                    body.message_id,
                    deliveries,
                    reason,
                )
                # A short pause so a transient fault (database restarting) is not hammered.
                await asyncio.sleep(min(0.2 * 2**deliveries, 10) * random.uniform(0.5, 1.0))
                await message.nack(requeue=True)
        else:
            await message.ack()

    async def _dead_letter(self, message: AbstractIncomingMessage, body: Body, reason: str) -> None:
        try:
            await self.mark_failed(body, reason)
        except Exception:
            log.exception("could not record %s as failed; returning it to the queue", body)
            await message.nack(requeue=True)
            return
        await message.reject(requeue=False)


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (quorum queues count it)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0
