"""``GET /v1/audit``: who did what to which message, when. For admins and readers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.api.deps import AuditDep, StaffDep
from services.api.models import IsoDateTime, UtcDateTime, as_naive_utc

router = APIRouter(prefix="/v1/audit", tags=["audit"])

MAX_ID = 2**31 - 1  # audit.id is a 32-bit integer in PostgreSQL


class AuditEntryPublic(BaseModel):
    id: int
    at: UtcDateTime
    actor: str = Field(
        description="the token (role, name and id) or the admin token of the settings"
    )
    action: str
    message_id: str | None
    detail: str


class AuditPage(BaseModel):
    count: int = Field(description="entries in this page")
    entries: list[AuditEntryPublic]
    next: int | None = Field(description="the cursor of the next page; null on the last one")


@router.get("", response_model=AuditPage)
async def list_audit(
    caller: StaffDep,
    log: AuditDep,
    message_id: Annotated[str | None, Query(max_length=26, description="one message's")] = None,
    action: Annotated[
        str | None, Query(max_length=32, description="e.g. released, deleted, token_issued")
    ] = None,
    since: Annotated[
        IsoDateTime | None, Query(description="entries at or after (ISO 8601)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="the ``next`` of the previous page"),
    ] = None,
) -> AuditPage:
    """Newest first. Pages are cut by ``limit``; pass the ``next`` of a page as ``cursor`` to
    read the following one (stable while new entries arrive)."""
    entries = await log.entries(
        message_id=message_id,
        action=action,
        before_id=cursor,
        since=as_naive_utc(since) if since is not None else None,
        limit=limit,
    )
    return AuditPage(
        count=len(entries),
        entries=[AuditEntryPublic.model_validate(entry.__dict__) for entry in entries],
        next=entries[-1].id if len(entries) == limit else None,
    )
