"""``/v1/messages``: a message's status, verdict, per-recipient delivery and timeline."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from services.api.actions import NotRetryable, Queued, retry_message
from services.api.deps import (
    AdminDep,
    AuditDep,
    BrokerDep,
    CallerDep,
    RepositoryDep,
    not_found,
    visible_message,
)
from services.api.models import MessagePublic, message_public

router = APIRouter(prefix="/v1/messages", tags=["messages"])


@router.get("/{message_id}", response_model=MessagePublic)
async def get_message(
    message_id: str, repository: RepositoryDep, caller: CallerDep
) -> MessagePublic:
    record = await visible_message(repository, caller, message_id)
    return message_public(record)


@router.post(
    "/{message_id}/retry", response_model=MessagePublic, status_code=status.HTTP_202_ACCEPTED
)
async def retry(
    message_id: str,
    repository: RepositoryDep,
    broker: BrokerDep,
    caller: AdminDep,
    audit: AuditDep,
) -> MessagePublic:
    """Send a failed (dead-lettered) message back to the stage where it failed."""
    await visible_message(repository, caller, message_id, with_history=False)
    try:
        await retry_message(repository, broker, message_id)
    except NotRetryable:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "only a failed message can be retried"
        ) from None
    except Queued:
        await audit.record(caller, "retry", message_id, "recorded; the sweep will publish it")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "retry recorded, but the broker is unreachable; the recovery sweep will send the "
            "message on",
            headers={"Retry-After": "60"},
        ) from None
    await audit.record(caller, "retry", message_id)
    record = await repository.get(message_id)
    if record is None:
        raise not_found(message_id)
    return message_public(record)
