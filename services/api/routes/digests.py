"""``POST /v1/digests/send``: send the quarantine digests now (the API also sends them every
``digest.interval``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.api.deps import AdminDep, AuditDep
from services.api.digests import Digests

router = APIRouter(prefix="/v1/digests", tags=["digests"])

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token", **PROBLEM},
    403: {"description": "not an administrator", **PROBLEM},
}


class DigestsSent(BaseModel):
    digests: int = Field(description="digest mails queued, one per recipient")
    entries: int = Field(description="held messages they tell of")
    notice_ids: list[str] = Field(description="the digests' own message ids")


@router.post("/send", response_model=DigestsSent, responses=ERRORS)
async def send_digests(request: Request, caller: AdminDep, audit: AuditDep) -> DigestsSent:
    """Email each recipient with newly held mail (not told of before) one digest. Running it
    twice, or while the periodic run works, never tells of a message twice."""
    digests: Digests = request.app.state.digests
    done = await digests.run()
    await audit.record(
        caller, "digests_sent", None, f"{done.digests} digests, {done.entries} entries"
    )
    return DigestsSent(digests=done.digests, entries=done.entries, notice_ids=done.notice_ids)
