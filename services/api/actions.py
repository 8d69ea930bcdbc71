"""What the API does beyond reading: the service layer the routes call."""

from __future__ import annotations

import logging

from moat.broker import Broker, PublishError
from moat.model import DeliveryRequest, MessageStatus, ScanRequest
from moat.repository import Repository
from moat.topology import DELIVER, SCAN

log = logging.getLogger("api")


class NotRetryable(Exception):
    """Only a failed message can be retried."""


class Queued(Exception):
    """The retry is recorded but the broker could not be reached; a sweep will publish it."""


async def retry_message(repository: Repository, broker: Broker, message_id: str) -> None:
    """Send a failed (dead-lettered) message back to the stage where it failed."""
    status = await repository.retry_failed(message_id)
    if status is None:
        raise NotRetryable(message_id)
    try:
        if status == MessageStatus.RECEIVED:
            await broker.publish(SCAN, ScanRequest(message_id=message_id))
            await repository.mark_queued([message_id])
        else:
            record = await repository.get(message_id, with_history=False)
            attempt = record.attempts if record else 0
            await broker.publish(DELIVER, DeliveryRequest(message_id=message_id, attempt=attempt))
    except PublishError as exc:
        log.warning(
            "retry of %s recorded but not published (%s); the sweep will",
            message_id,
            exc,
            extra={"queue_id": message_id},
        )
        raise Queued(message_id) from exc
    log.info(
        "administrator retry: %s back to %s", message_id, status, extra={"queue_id": message_id}
    )
