"""The AMQP side of every service: one supervised connection, confirmed publishing, and the
consumer base class that owns acknowledgement.

Acknowledgement rule: a consumer acks only after its work is committed (database written and the
next publish confirmed). A crash anywhere before that means redelivery, so every handler is
idempotent. Errors decide what happens next by their type:

- ``PoisonMessage``: the message can never succeed; it is marked ``failed`` and dead-lettered.
- anything else: transient; the message is returned to its queue after a short pause. The broker
  counts deliveries; on the last one allowed by ``x-delivery-limit`` the consumer marks it
  ``failed`` and dead-letters it itself, so the failure is recorded with its reason.

Work is not tied to the connection it came on: a handler runs in a task of the consumer's own,
so a lost connection does not cut a delivery or a commit in half. The work finishes; its ack
then has nowhere to go, the broker delivers the message again, and the idempotent handler
recognises it as done. A stop (``Consumer.stop``) takes no new messages, lets the ones in hand
finish within a bound, and hands back the rest without counting them as failed deliveries.
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
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pamqp.commands import Basic
from pydantic import ValidationError

from moat import logs, metrics
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
        self._consumers: dict[str, tuple[int, ConsumerCallback]] = {}
        self._consuming: dict[str, tuple[AbstractQueue, str]] = {}  # queue -> (queue, tag)
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def consuming(self, queue: str) -> bool:
        """Connected, with a consumer registered on ``queue`` (a readiness probe's question)."""
        return self._ready.is_set() and queue in self._consuming

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
            consuming = {
                queue: await self._start_consumer(connection, queue, prefetch, callback)
                for queue, (prefetch, callback) in self._consumers.items()
            }
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        self._connection, self._publish_channel = connection, publish_channel
        self._consuming = consuming
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
        timeout: float | None = None,
    ) -> None:
        """Publish persistently and wait for the broker's confirm; raise PublishError if the
        message is not known to be safe in its queue within ``timeout`` (default
        ``publish_timeout``), which includes waiting for a lost connection to come back."""
        message = aio_pika.Message(
            encode_body(body),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=body.message_id,
            expiration=expiration_ms / 1000 if expiration_ms is not None else None,
        )
        await self._publish(queue, message, timeout or self.settings.publish_timeout)

    async def _publish(self, queue: str, message: aio_pika.Message, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._ready.wait()
                    channel = self._publish_channel
                    assert channel is not None
                    try:
                        confirmation = await channel.default_exchange.publish(
                            message, routing_key=queue, mandatory=True
                        )
                        break
                    except Exception:
                        if not channel.is_closed and channel is self._publish_channel:
                            raise
                        # The connection went while we published: wait for the next one.
                        await asyncio.sleep(0.1)
        except TimeoutError as exc:
            raise PublishError(f"no confirm from the broker within {timeout}s") from exc
        except PublishError:
            raise
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

    async def queue_stats(self) -> list[tuple[str, int, int]]:
        """(queue, messages ready, consumers) of every queue of the topology, exact and current
        (passive declares on a channel of their own); raises when the broker is unreachable."""
        if self._connection is None or not self._ready.is_set():
            raise PublishError("not connected to the broker")
        stats = []
        async with asyncio.timeout(self.settings.publish_timeout):
            channel = await self._connection.channel()
            try:
                for spec in self.topology:
                    declared = await channel.declare_queue(spec.name, passive=True)
                    result = declared.declaration_result
                    stats.append(
                        (spec.name, int(result.message_count or 0), int(result.consumer_count or 0))
                    )
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return stats

    async def consume(self, queue: str, prefetch: int, callback: ConsumerCallback) -> None:
        """Consume ``queue`` now and again after every reconnection."""
        self._consumers[queue] = (prefetch, callback)
        if self._connection is not None and self._ready.is_set():
            self._consuming[queue] = await self._start_consumer(
                self._connection, queue, prefetch, callback
            )

    async def cancel(self, queue: str) -> None:
        """Stop consuming ``queue`` (basic.cancel): the broker sends no more of its messages;
        those in hand stay ours to ack or hand back."""
        self._consumers.pop(queue, None)
        consuming = self._consuming.pop(queue, None)
        if consuming is not None and self._ready.is_set():
            declared, tag = consuming
            try:
                await asyncio.wait_for(declared.cancel(tag), self.settings.publish_timeout)
            except Exception as exc:  # the connection is going anyway
                log.info("could not cancel the %s consumer: %s", queue, exc)

    @staticmethod
    async def _start_consumer(
        connection: AbstractConnection, queue: str, prefetch: int, callback: ConsumerCallback
    ) -> tuple[AbstractQueue, str]:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await channel.get_queue(queue, ensure=False)
        tag = await declared.consume(callback)
        return declared, tag


class Consumer(ABC, Generic[Body]):
    """Base class of the scanner's and delivery's workers; a subclass writes ``handle``."""

    queue: str
    body_type: type[Body]
    service: str

    def __init__(self, broker: Broker, prefetch: int) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    @abstractmethod
    async def handle(self, body: Body) -> None:
        """Do the work and commit it; raise to have the message retried or dead-lettered."""

    @abstractmethod
    async def mark_failed(self, body: Body, reason: str) -> None:
        """Record that this message is dead-lettered (status ``failed``) and why."""

    async def start(self) -> None:
        await self.broker.consume(self.queue, self.prefetch, self._on_message)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def stop(self, timeout: float) -> None:
        """Take no new messages, let those in hand finish for up to ``timeout`` seconds (a
        stop should not cut an SMTP transaction or a commit in half: that would mean a
        duplicate later), then cancel the rest, which hand their messages back."""
        self.stopping = True
        await self.broker.cancel(self.queue)
        if not self._tasks:
            return
        log.info("%s: finishing %d message(s) in hand", self.queue, len(self._tasks))
        _, unfinished = await asyncio.wait(set(self._tasks), timeout=timeout)
        if unfinished:
            log.warning(
                "%s: %d message(s) still in hand after %.0fs; handing them back",
                self.queue,
                len(unfinished),
                timeout,
            )
            for task in unfinished:
                task.cancel()
            await asyncio.wait(unfinished, timeout=self.broker.settings.publish_timeout + 1)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq cancels its consumer callbacks when the channel closes; the work runs in a
        # task of ours so that a lost connection does not cut it in half.
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        done = metrics.get().consumed
        try:
            body = decode_body(message.body)
            if not isinstance(body, self.body_type):
                raise PoisonMessage(f"a {body.kind} request has no place in queue {self.queue}")
        except (ValidationError, PoisonMessage) as exc:
            log.error("dead-lettering an unreadable message from %s: %s", self.queue, exc)
            await _settle(message.reject(requeue=False), self.queue, "reject")
            done.labels(self.queue, "unreadable").inc()
            return
        logs.bind_queue_id(body.message_id)  # this task's lines, and its children's

        deliveries = _delivery_count(message) + 1
        last_chance = deliveries >= self.broker.settings.delivery_limit
        try:
            await self.handle(body)
        except asyncio.CancelledError:
            # A stop, not a failure: the message goes back uncounted, to be done again.
            await asyncio.shield(self._hand_back(message, body))
            done.labels(self.queue, "handed_back").inc()
            raise
        except PoisonMessage as exc:
            log.error("%s %s is poison: %s", self.queue, body.message_id, exc)
            await self._dead_letter(message, body, f"poison: {exc}")
        except Exception as exc:
            if last_chance:
                log.exception("%s %s failed %d times", self.queue, body.message_id, deliveries)
                # The reason is for people reading the API; the exception is in the log.
                await self._dead_letter(
                    message,
                    body,
                    f"gave up after {deliveries} tries: an internal error "
                    f"({type(exc).__name__}); the {self.service} log has the details",
                )
            else:
                log.warning(
                    "%s %s failed (attempt %d), will retry: %s: %s",
                    self.queue,
                    body.message_id,
                    deliveries,
                    type(exc).__name__,
                    exc,
                )
                # A short pause so a transient fault (database restarting) is not hammered.
                await asyncio.sleep(min(0.2 * 2**deliveries, 10) * random.uniform(0.5, 1.0))
                await _settle(message.nack(requeue=True), self.queue, "nack")
                done.labels(self.queue, "retry").inc()
        else:
            await _settle(message.ack(), self.queue, "ack")
            done.labels(self.queue, "ok").inc()

    async def _hand_back(self, message: AbstractIncomingMessage, body: Body) -> None:
        """Give an unfinished message back to the broker without counting a delivery: a copy
        goes to the end of the queue (confirmed), then the original is acked. Should that fail
        the original stays unacked, and the broker takes it back when the channel closes."""
        try:
            await self.broker.publish(self.queue, body)
        except PublishError as exc:
            log.warning("%s %s: could not hand back (%s)", self.queue, body.message_id, exc)
            return
        await _settle(message.ack(), self.queue, "ack")
        log.info("%s %s handed back unfinished", self.queue, body.message_id)

    async def _dead_letter(self, message: AbstractIncomingMessage, body: Body, reason: str) -> None:
        try:
            await self.mark_failed(body, reason)
        except Exception:
            log.exception("could not record %s as failed; returning it to the queue", body)
            await _settle(message.nack(requeue=True), self.queue, "nack")
            metrics.get().consumed.labels(self.queue, "retry").inc()
            return
        await _settle(message.reject(requeue=False), self.queue, "reject")
        metrics.get().consumed.labels(self.queue, "dead_lettered").inc()


async def _settle(answer: Awaitable[None], queue: str, what: str) -> None:
    """Send an ack, nack or reject. When the channel the message came on is gone (the
    connection was lost while we worked), the broker already took the message back and will
    deliver it again; the work is recorded, so the redelivery is recognised as done."""
    try:
        await answer
    except Exception as exc:
        log.info(
            "%s: could not %s (%s: %s); the broker will redeliver",
            queue,
            what,
            type(exc).__name__,
            exc,
        )


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (quorum queues count it)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0
