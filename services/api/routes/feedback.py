"""``POST /v1/messages/{id}/feedback``: someone says a message was spam or ham.

The API only records it (table ``feedback``) and answers 202: a scanner, which owns the
classifier, learns it from the spooled copy within ``scanner.classifier.poll_interval``
(``services/scanner/feedback.py``), and every scanner picks the new weights up. So the API
process never loads the classifier (numpy, the model, the archive readers).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from services.api.deps import AuditDep, RepositoryDep, StoreDep, WriterDep, visible_message
from services.api.problems import problem_responses

router = APIRouter(prefix="/v1/messages", tags=["feedback"])


class Feedback(BaseModel):
    label: Literal["spam", "ham"]


class FeedbackAccepted(BaseModel):
    message_id: str
    label: Literal["spam", "ham"]
    status: Literal["pending"] = Field(
        description="recorded; a scanner learns it shortly (learning the same message with "
        "the same label twice counts once)"
    )


@router.post(
    "/{message_id}/feedback",
    response_model=FeedbackAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(410),
)
async def feedback(
    message_id: str,
    body: Feedback,
    repository: RepositoryDep,
    store: StoreDep,
    caller: WriterDep,
    audit: AuditDep,
) -> FeedbackAccepted:
    """Record the message as spam or ham, for the classifier to learn. 410 when no copy of
    the message is left to learn from (delivered mail's copy is removed, unless
    ``retention.delivered_copy`` keeps it a while)."""
    await visible_message(repository, caller, message_id, with_history=False)
    if not await store.exists(message_id):
        raise HTTPException(
            status.HTTP_410_GONE, f"message {message_id!r} is no longer in the spool"
        )
    await repository.record_feedback(message_id, body.label, "api")
    await audit.record(caller, "feedback", message_id, body.label)
    return FeedbackAccepted(message_id=message_id, label=body.label, status="pending")
