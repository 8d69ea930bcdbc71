"""``/v1/messages``: a message's status, verdict, per-recipient delivery and timeline."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from services.api.deps import AdminDep, RepositoryDep
from services.api.models import MessagePublic, VerdictPublic

router = APIRouter(prefix="/v1/messages", tags=["messages"], dependencies=[AdminDep])


@router.get("/{message_id}", response_model=MessagePublic)
async def get_message(message_id: str, repository: RepositoryDep) -> MessagePublic:
    if not (message_id.isalnum() and len(message_id) <= 26):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no message {message_id!r}")
    record = await repository.get(message_id)
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
