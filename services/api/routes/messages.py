"""``/v1/messages``: a message's status, verdict, per-recipient delivery and timeline."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from services.api.actions import NotRetryable, Queued, retry_message
from services.api.deps import AdminDep, BrokerDep, RepositoryDep
from services.api.models import MessagePublic, VerdictPublic

router = APIRouter(prefix="/v1/messages", tags=["messages"], dependencies=[AdminDep])


def _valid_id(message_id: str) -> str:
    if not (message_id.isalnum() and len(message_id) <= 26):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no message {message_id!r}")
    return message_id


@router.get("/{message_id}", response_model=MessagePublic)
async def get_message(message_id: str, repository: RepositoryDep) -> MessagePublic:
    record = await repository.get(_valid_id(message_id))
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no message {message_id!r}")
    verdict = None
    if record.verdict is not None:
        verdict = VerdictPublic(
            verdict=record.verdict, score=record.score or 0.0, findings=record.findings or []
        )
    return MessagePublic.model_validate(
        {**record.model_dump(exclude={"verdict", "score", "findings"}), "verdict": verdict}
    )


@router.post(
    "/{message_id}/retry", response_model=MessagePublic, status_code=status.HTTP_202_ACCEPTED
)
async def retry(message_id: str, repository: RepositoryDep, broker: BrokerDep) -> MessagePublic:
    """Send a failed (dead-lettered) message back to the stage where it failed."""
    try:
        await retry_message(repository, broker, _valid_id(message_id))
    except NotRetryable:
        if await repository.get(message_id, with_history=False) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no message {message_id!r}") from None
        raise HTTPException(
            status.HTTP_409_CONFLICT, "only a failed message can be retried"
        ) from None
    except Queued:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "retry recorded, but the broker is unreachable; the recovery sweep will send the "
            "message on",
            headers={"Retry-After": "60"},
        ) from None
    return await get_message(message_id, repository)
