"""``POST /v1/messages/{id}/feedback``: an administrator says a message was spam or ham; the
spooled message is learned into the classifier's store, which every scanner polls.

Include with ``app.include_router(feedback.router)``. The classifier (the shipped model plus
the learned deltas) is loaded on the first request and kept in ``app.state``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from moat.spool import MessageStore
from services.api.deps import AuditDep, RepositoryDep, WriterDep, get_settings, visible_message
from services.scanner.classifier.engine import Classifier

log = logging.getLogger("api")

router = APIRouter(prefix="/v1/messages", tags=["feedback"])


class Feedback(BaseModel):
    label: Literal["spam", "ham"]


class FeedbackResult(BaseModel):
    message_id: str
    label: Literal["spam", "ham"]
    learned: bool  # false: this message had been learned with this label already
    generation: int  # the store's generation after this feedback; scanners poll it
    probability_before: float  # the classifier's spam probability before learning


async def get_classifier(request: Request) -> Classifier:
    state = request.app.state
    classifier: Classifier | None = getattr(state, "classifier", None)
    if classifier is None:
        lock: asyncio.Lock | None = getattr(state, "classifier_lock", None)
        if lock is None:  # no await since the look: no other request can be here meanwhile
            lock = state.classifier_lock = asyncio.Lock()
        async with lock:
            classifier = getattr(state, "classifier", None)
            if classifier is None:
                settings = get_settings(request)
                engine = state.repository.engine
                classifier = await asyncio.to_thread(
                    Classifier, settings.scanner.classifier, engine
                )
                state.classifier = classifier
    return classifier


ClassifierDep = Annotated[Classifier, Depends(get_classifier)]


@router.post("/{message_id}/feedback", response_model=FeedbackResult)
async def feedback(
    message_id: str,
    body: Feedback,
    request: Request,
    repository: RepositoryDep,
    classifier: ClassifierDep,
    caller: WriterDep,
    audit: AuditDep,
) -> FeedbackResult:
    """Learn the message as spam or ham. Learning the same message with the same label again
    changes nothing (``learned: false``); with the other label, it is learned again."""
    await visible_message(repository, caller, message_id, with_history=False)
    store = MessageStore(get_settings(request).spool_dir)
    try:
        raw = await store.read(message_id)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_410_GONE, f"message {message_id!r} is no longer in the spool"
        ) from None
    try:
        result = await classifier.learn(raw, body.label == "spam", "api", message_id)
    except Exception as exc:
        log.warning("feedback on %s could not be stored: %r", message_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the feedback could not be stored; try again later",
            headers={"Retry-After": "30"},
        ) from None
    log.info("feedback: %s learned as %s (%s)", message_id, body.label, result.learned)
    await audit.record(caller, "feedback", message_id, body.label)
    return FeedbackResult(
        message_id=message_id,
        label=body.label,
        learned=result.learned,
        generation=result.generation,
        probability_before=round(result.probability_before, 6),
    )
