"""``/v1/messages``: find mail, read it (status and timeline, the raw copy, a safe preview),
and let it out of quarantine or delete it, one message or many; an administrator's retry of a
failed message. The rules (who may do what to which message) are in ``quarantine.py``; a
scoped token sees only mail addressed to its scope, and anything else answers 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from moat.model import MessageStatus, VerdictName
from moat.repository import MessageSearch
from services.api.actions import NotRetryable, Queued, retry_message
from services.api.deps import (
    AdminDep,
    AuditDep,
    BrokerDep,
    CallerDep,
    QuarantineDep,
    RepositoryDep,
    WriterDep,
    not_found,
    visible_message,
)
from services.api.models import (
    ActionResult,
    BulkBody,
    BulkOutcome,
    BulkResult,
    IsoDateTime,
    MessageList,
    MessagePublic,
    PreviewPublic,
    ReleaseBody,
    as_naive_utc,
    message_public,
    message_summary,
    preview_public,
)
from services.api.problems import problems
from services.api.quarantine import BulkOutcome as Outcome
from services.api.quarantine import Done, recipient_match
from services.api.routes.release_requests import (
    ReleaseRequestCreate,
    ReleaseRequestList,
    request_list,
)

router = APIRouter(prefix="/v1/messages", tags=["messages"])

MAX_PAGE = 200


def _action(done: Done) -> ActionResult:
    return ActionResult(
        id=done.message_id,
        action=done.action,
        recipients=list(done.recipients),
        status=done.status,
        detail=done.detail,
    )


@router.get("", response_model=MessageList, responses=problems(401, 422))
async def list_messages(
    caller: CallerDep,
    quarantine: QuarantineDep,
    sender: Annotated[
        str | None,
        Query(max_length=320, description="in the envelope sender or the From header, any case"),
    ] = None,
    recipient: Annotated[
        str | None,
        Query(max_length=320, description="an address (any case), or @domain for a whole domain"),
    ] = None,
    subject: Annotated[
        str | None, Query(max_length=998, description="in the Subject, any case")
    ] = None,
    message_status: Annotated[
        list[MessageStatus] | None,
        Query(alias="status", description="the message's state; repeat for any of several"),
    ] = None,
    verdict: Annotated[
        list[VerdictName] | None, Query(description="repeat for any of several")
    ] = None,
    received_after: Annotated[
        IsoDateTime | None, Query(description="ISO 8601, inclusive; no offset: UTC")
    ] = None,
    received_before: Annotated[
        IsoDateTime | None, Query(description="ISO 8601, exclusive; no offset: UTC")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="messages per page")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=64, description="the `next` of the previous page")
    ] = None,
) -> MessageList:
    """Search mail, newest first, a page at a time: follow `next` until it is null. Pages
    are stable while mail keeps arriving (newer mail never shifts a later page). A scoped
    token finds only mail addressed to its scope, and sees only its own recipients.

    Cost: one indexed query for the page, one for its recipients; a recipient (or a scoped
    token) narrows by index first, substrings are matched row by row until the page is full
    (see `Repository.search_messages`)."""
    search = MessageSearch(
        sender=sender or None,
        subject=subject or None,
        recipients=(recipient_match(recipient),) if recipient else (),
        statuses=frozenset(message_status or ()),
        verdicts=frozenset(verdict or ()),
        received_after=as_naive_utc(received_after) if received_after else None,
        received_before=as_naive_utc(received_before) if received_before else None,
    )
    page = await quarantine.search(caller, search, cursor, limit)
    return MessageList(
        count=len(page.messages),
        messages=[message_summary(record, caller) for record in page.messages],
        next=page.next,
    )


@router.post("/release", response_model=BulkResult, responses=problems(401, 403, 413, 422))
async def release_many(body: BulkBody, caller: WriterDep, quarantine: QuarantineDep) -> BulkResult:
    """Release each listed message as `POST /v1/messages/{id}/release` without a body would:
    one result per id, in the order given (`released`, `not_found`, `conflict`, `forbidden`).
    """
    return _bulk(await quarantine.bulk(caller, "release", body.ids))


@router.post("/delete", response_model=BulkResult, responses=problems(401, 403, 413, 422))
async def delete_many(body: BulkBody, caller: WriterDep, quarantine: QuarantineDep) -> BulkResult:
    """Delete each listed message as `DELETE /v1/messages/{id}` would: one result per id, in
    the order given (`deleted`, `not_found`, `conflict`, `forbidden`)."""
    return _bulk(await quarantine.bulk(caller, "delete", body.ids))


def _bulk(outcomes: list[Outcome]) -> BulkResult:
    results = [BulkOutcome(id=o.message_id, outcome=o.outcome, detail=o.detail) for o in outcomes]
    return BulkResult(count=len(results), results=results)


@router.get("/{message_id}", response_model=MessagePublic, responses=problems(401, 404, 422))
async def get_message(
    message_id: str, repository: RepositoryDep, caller: CallerDep
) -> MessagePublic:
    """Status, envelope, main headers, verdict with every finding, per-recipient delivery
    with the next hop's last reply, and the timeline."""
    record = await visible_message(repository, caller, message_id)
    return message_public(record, caller)


@router.get(
    "/{message_id}/raw",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the message as received (our Received: header on top)",
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problems(401, 404, 410, 422),
    },
)
async def raw_message(
    message_id: str, caller: CallerDep, quarantine: QuarantineDep
) -> StreamingResponse:
    """The original message, a download, while its copy is kept: quarantined, failed or in
    delivery; delivered mail only while `retention.delivered_copy` keeps it. 410 once gone."""
    record, copy = await quarantine.open_copy(caller, message_id)
    return StreamingResponse(
        copy.chunks(),
        media_type="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="{record.id}.eml"',
            "Content-Length": str(copy.size),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/{message_id}/preview",
    response_model=PreviewPublic,
    responses=problems(401, 404, 410, 422),
)
async def preview_message(
    message_id: str, caller: CallerDep, quarantine: QuarantineDep
) -> PreviewPublic:
    """The main headers and the body as plain text, made safe: scripts, styles and remote
    content dropped (never run or fetched), links shown as text, attachments listed, never
    opened. 410 once the copy is gone."""
    return preview_public(message_id, await quarantine.preview(caller, message_id))


@router.post(
    "/{message_id}/release",
    response_model=ActionResult,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(401, 403, 404, 409, 413, 422),
)
async def release(
    message_id: str,
    caller: WriterDep,
    quarantine: QuarantineDep,
    body: Annotated[ReleaseBody | None, Body()] = None,
) -> ActionResult:
    """Let held mail go: the given recipients, or every held recipient the token may act
    for (a user token: its own; the others stay held). Delivered as is, or judged again with
    `rescan` (and held again if it is still spam). A recipient may release spam; virus and
    policy quarantine only an admin (403: ask with `request-release`). 409 when nothing is
    held any more: a second release never delivers twice. Releasing spam counts as "not spam"
    feedback."""
    body = body or ReleaseBody()
    done = await quarantine.release(caller, message_id, body.recipients, rescan=body.rescan)
    return _action(done)


@router.delete(
    "/{message_id}", response_model=ActionResult, responses=problems(401, 403, 404, 409, 422)
)
async def delete(message_id: str, caller: WriterDep, quarantine: QuarantineDep) -> ActionResult:
    """Delete held mail: every held recipient the token may act for (a user token: its own
    copy; the others stay held). Once nobody's copy is held the message is `deleted`: the
    record and its timeline stay, the raw copy goes. An admin may delete a failed message."""
    return _action(await quarantine.delete(caller, message_id))


@router.post(
    "/{message_id}/request-release",
    response_model=ReleaseRequestList,
    status_code=status.HTTP_201_CREATED,
    responses=problems(401, 403, 404, 409, 413, 422),
)
async def request_release(
    message_id: str,
    caller: WriterDep,
    quarantine: QuarantineDep,
    body: Annotated[ReleaseRequestCreate | None, Body()] = None,
) -> ReleaseRequestList:
    """Ask an admin to release what you may not release yourself (virus or policy
    quarantine), with a user or domain token: one request per held recipient of yours. 409
    when one is pending already, or when you may release it yourself."""
    reason = body.reason if body else ""
    return request_list(await quarantine.request_release(caller, message_id, reason))


@router.post(
    "/{message_id}/retry",
    response_model=MessagePublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(401, 403, 404, 409, 422, 503),
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
    return message_public(record, caller)
