"""The dead-letter sweep: makes every message in the ``dead`` queue show as ``failed``.

Consumers mark a message ``failed`` themselves when they give up on it. But when a consumer
dies on every delivery of a message (a crash, an out-of-memory kill), the broker dead-letters it
after ``x-delivery-limit`` deliveries and nobody records it: its record would stay ``queued``
or ``delivering`` forever. This sweep reads the ``dead`` queue, marks such records ``failed``
with the broker's reason, and puts every message back at the end of ``dead``, where it stays
visible while its record is ``failed``. A copy that died before an administrator's retry of
its message (the sweep had not seen it yet) is stale: recording it would undo the retry.
Once an administrator has retried it through the API (its record is no longer ``failed``),
the next pass takes its copy out of ``dead``: the queue holds what is failed now, not what
once was. A message already seen carries
``x-moat-recorded`` and costs a read by primary key per pass, no write.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from moat import metrics
from moat.broker import DROP, Broker, Drop
from moat.model import MessageStatus, decode_body
from moat.repository import Repository
from moat.topology import DEAD

log = logging.getLogger(__name__)

RECORDED = "x-moat-recorded"


class DeadLetterSweep:
    def __init__(self, broker: Broker, repository: Repository, max_per_pass: int = 1000) -> None:
        self.broker = broker
        self.repository = repository
        self.max_per_pass = max_per_pass
        self.dropped = 0

    async def run_once(self) -> None:
        self.dropped = 0
        marked = await self.broker.cycle(DEAD, self._visit, self.max_per_pass)
        if marked:
            log.warning("%d dead-lettered message(s) recorded as failed", marked)
        if self.dropped:
            log.info("%d retried message(s) taken out of '%s'", self.dropped, DEAD)

    async def _visit(self, message: AbstractIncomingMessage) -> dict[str, str] | None | Drop:
        """Returns the headers to add when the message is put back, None if none, or DROP when
        its record was retried since (no longer ``failed``)."""
        headers = message.headers or {}
        try:
            body = decode_body(message.body)
        except ValidationError:
            return None if headers.get(RECORDED) else {RECORDED: "unreadable"}
        if headers.get(RECORDED):
            record = await self.repository.get(body.message_id, with_history=False)
            if record is not None and record.status != MessageStatus.FAILED:
                self.dropped += 1
                return DROP
            return None
        reason = _death_reason(headers)
        died_at = _death_time(headers)
        if await self.repository.record_dead_letter(body.message_id, reason, died_at):
            log.warning(
                "%s was dead-lettered by the broker: %s",
                body.message_id,
                reason,
                extra={"queue_id": body.message_id},
            )
            metrics.get().job_did("dead_letter_sweep", "dead_lettered", 1)
            return {RECORDED: "failed"}
        return {RECORDED: "already"}


def _death_time(headers: Mapping[str, object]) -> datetime | None:
    """When the broker last dead-lettered this copy (UTC, naive like the database's times;
    whole seconds: AMQP timestamps have no finer grain), or None if it does not say."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return None
    times = [d.get("time") for d in deaths if isinstance(d, Mapping)]
    stamps = [t for t in times if isinstance(t, datetime)]
    if not stamps:
        return None
    latest = max(s if s.tzinfo is None else s.astimezone(UTC).replace(tzinfo=None) for s in stamps)
    return latest


def _death_reason(headers: Mapping[str, object]) -> str:
    queue = headers.get("x-first-death-queue", "?")
    why = headers.get("x-first-death-reason", "?")
    if why == "delivery_limit":
        return f"dead-lettered from {queue}: delivery limit reached (its consumer kept failing)"
    return f"dead-lettered from {queue}: {why}"
