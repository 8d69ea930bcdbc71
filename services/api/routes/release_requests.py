"""``/v1/release-requests``: a recipient's requests that an administrator release virus or
policy quarantine (made with ``POST /v1/messages/{id}/request-release``). Admins (and readers,
who only read) list them; admins approve (the release is done as the admin) or refuse; the
requester is told by mail either way."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from moat.repository import ReleaseRequestRecord
from services.api.deps import AdminDep, QuarantineDep, RepositoryDep, StaffDep
from services.api.models import ActionResult, UtcDateTime
from services.api.problems import problems
from services.api.quarantine import Decision, decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/release-requests", tags=["release requests"])

RequestStatus = Literal["pending", "approved", "refused"]


class ReleaseRequestCreate(BaseModel):
    reason: str = Field("", max_length=2000, description="why it should be released")


class ReleaseRequestPublic(BaseModel):
    id: str
    message_id: str
    recipient: str = Field(description="whose copy; the requester, told of the decision")
    requested_by: str
    reason: str
    status: RequestStatus
    created_at: UtcDateTime
    decided_at: UtcDateTime | None
    decided_by: str | None
    subject: str | None = Field(description="the message's subject")
    verdict: str | None = Field(description="why it is held")


class ReleaseRequestList(BaseModel):
    count: int
    requests: list[ReleaseRequestPublic]
    next: str | None = Field(None, description="pass as ?cursor= for the next page")


class DecisionBody(BaseModel):
    note: str = Field("", max_length=2000, description="told to the requester in the notice")


class DecisionPublic(BaseModel):
    request: ReleaseRequestPublic
    release: ActionResult | None = Field(description="what the approval released")
    notified: bool = Field(description="the requester's notice is queued for delivery")


def request_public(record: ReleaseRequestRecord) -> ReleaseRequestPublic:
    return ReleaseRequestPublic.model_validate(record.model_dump())


def request_list(
    records: list[ReleaseRequestRecord], next_cursor: str | None = None
) -> ReleaseRequestList:
    return ReleaseRequestList(
        count=len(records), requests=[request_public(r) for r in records], next=next_cursor
    )


def _decision(decision: Decision) -> DecisionPublic:
    done = decision.release
    return DecisionPublic(
        request=request_public(decision.request),
        release=None
        if done is None
        else ActionResult(
            id=done.message_id,
            action=done.action,
            recipients=list(done.recipients),
            status=done.status,
            detail=done.detail,
        ),
        notified=decision.notified,
    )


@router.get("", response_model=ReleaseRequestList, responses=problems(401, 403, 422))
async def list_requests(
    caller: StaffDep,
    repository: RepositoryDep,
    request_status: Annotated[
        list[RequestStatus] | None,
        Query(alias="status", description="repeat for several; default: pending"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> ReleaseRequestList:
    """Release requests, newest first (pending ones unless `status` says otherwise)."""
    before = decode_cursor(cursor) if cursor else None
    found = await repository.release_requests(
        statuses=request_status or ["pending"], before_id=before, limit=limit + 1
    )
    more = len(found) > limit
    found = found[:limit]
    return request_list(found, encode_cursor(found[-1].id) if more else None)


@router.post(
    "/{request_id}/approve",
    response_model=DecisionPublic,
    responses=problems(401, 403, 404, 409, 422),
)
async def approve(request_id: str, caller: AdminDep, quarantine: QuarantineDep) -> DecisionPublic:
    """Release the message for the requester (as this admin) and tell them. 409 if the
    request was decided already, or if nothing is held for them any more (the request then
    stays pending: refuse it)."""
    return _decision(await quarantine.decide(caller, request_id, approve=True))


@router.post(
    "/{request_id}/refuse",
    response_model=DecisionPublic,
    responses=problems(401, 403, 404, 409, 413, 422),
)
async def refuse(
    request_id: str,
    caller: AdminDep,
    quarantine: QuarantineDep,
    body: Annotated[DecisionBody | None, Body()] = None,
) -> DecisionPublic:
    """Refuse the request: the message stays held; the requester is told (with the note)."""
    note = body.note if body else ""
    return _decision(await quarantine.decide(caller, request_id, approve=False, note=note))
