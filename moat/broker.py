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
import logging
import random
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pamqp.commands import Basic
from pydantic import ValidationError

from moat.model import DeliveryRequest, ScanRequest, decode_body, encode_body
from moat.settings import BrokerSettings
from moat.topology import QueueSpec

log = logging.getLogger(__name__)

Body = TypeVar("Body", ScanRequest, DeliveryRequest)


class PublishError(Exception):
    """The broker did not confirm a publish (nack, unroutable, timeout or connection lost)."""


class PoisonMessage(Exception):
    """Processing this message can never succeed; retrying would only repeat the failure."""


class Broker:
    """One connection per process: a channel with publisher confirms for publishing, and one
    channel per consumer so each has its own prefetch."""

    def __init__(self, settings: BrokerSettings, topology: list[QueueSpec]) -> None:
        self.settings = settings
        self.topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self.settings.url.get_secret_value(),
            client_properties={"connection_name": "moat"},
            timeout=self.settings.publish_timeout,
        )
        self._publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        for spec in self.topology:
            await self._publish_channel.declare_queue(
                spec.name, durable=True, arguments=spec.arguments
            )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(
        self,
        queue: str,
        body: ScanRequest | DeliveryRequest,
        *,
        expiration_ms: int | None = None,
    ) -> None:
        """Publish persistently and wait for the broker's confirm; raise PublishError if the
        message is not known to be safe in its queue."""
        if self._publish_channel is None:
            raise PublishError("not connected to the broker")
        message = aio_pika.Message(
            encode_body(body),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=body.message_id,
            expiration=expiration_ms / 1000 if expiration_ms is not None else None,
        )
        timeout = self.settings.publish_timeout
        try:
            confirmation = await asyncio.wait_for(
                self._publish_channel.default_exchange.publish(
                    message, routing_key=queue, mandatory=True
                ),
                timeout,
            )
        except TimeoutError as exc:
            raise PublishError(f"no confirm from the broker within {timeout}s") from exc
        except Exception as exc:  # connection lost, channel closed, message returned
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(f"broker refused the message: {confirmation!r}")

    async def consume(self, queue: str, prefetch: int, callback: Any) -> AbstractQueue:
        if self._connection is None:
            raise RuntimeError("connect() first")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await channel.get_queue(queue, ensure=False)
        await declared.consume(callback)
        return declared


class Consumer(ABC, Generic[Body]):
    """Base class of the scanner's and delivery's workers; a subclass writes ``handle``."""

    queue: str
    body_type: type[Body]

    def __init__(self, broker: Broker, prefetch: int) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self._tasks: set[asyncio.Task[None]] = set()

    @abstractmethod
    async def handle(self, body: Body) -> None:
        """Do the work and commit it; raise to have the message retried or dead-lettered."""

    @abstractmethod
    async def mark_failed(self, body: Body, reason: str) -> None:
        """Record that this message is dead-lettered (status ``failed``) and why."""

    async def start(self) -> None:
        await self.broker.consume(self.queue, self.prefetch, self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
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
                    self.queue, body.message_id, deliveries, reason,
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
