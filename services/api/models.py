"""What the API shows: public shapes of a message, separate from the database records."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from moat.mime import Preview
from moat.model import Finding, MessageStatus, RecipientStatus
from moat.repository import MessageRecord
from services.api.auth import Principal


def _as_utc(value: datetime) -> datetime:
    """The database keeps naive UTC; the API says so (ISO 8601 with an offset)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]

_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_only(value: object) -> object:
    """What the schema promises (``format: date-time``) and nothing else: pydantic would also
    take a number, or a numeric string, as seconds since 1970."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-01-31T12:00:00Z")
    return value


# A date and time given to the API (a query parameter, a field of a body): ISO 8601 only.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


def as_naive_utc(value: datetime) -> datetime:
    """What the database keeps: naive UTC (a value without an offset is taken as UTC)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


class RecipientPublic(BaseModel):
    address: str
    status: RecipientStatus
    attempts: int
    remote_host: str | None
    reply: str | None
    updated_at: UtcDateTime


class VerdictPublic(BaseModel):
    verdict: str
    score: float
    findings: list[Finding]


class EventPublic(BaseModel):
    at: UtcDateTime
    service: str
    event: str
    detail: str


class MessagePublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: MessageStatus
    mail_from: str
    subject: str | None = Field(description="the Subject header, decoded, one line")
    from_: str | None = Field(alias="from", description="the From header, decoded, one line")
    message_id: str | None = Field(description="the Message-ID header")
    client_address: str
    helo: str
    submitted_by: str | None = Field(
        description="the submission user who sent it (SMTP AUTH); null: not authenticated"
    )
    size: int
    received_at: UtcDateTime
    updated_at: UtcDateTime
    verdict: VerdictPublic | None
    attempts: int
    next_attempt_at: UtcDateTime | None
    bounce_of: str | None
    reason: str | None
    released_at: UtcDateTime | None = Field(description="when it was let out of quarantine")
    recipients: list[RecipientPublic] = Field(
        description="for a scoped token, only the recipients in its scope"
    )
    events: list[EventPublic]


class RecipientSummary(BaseModel):
    address: str
    status: RecipientStatus


class MessageSummary(BaseModel):
    """A message in a listing."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    received_at: UtcDateTime
    status: MessageStatus
    verdict: str | None
    score: float | None
    mail_from: str = Field(description="the envelope sender; empty: the null sender")
    from_: str | None = Field(alias="from", description="the From header, decoded")
    subject: str | None
    recipients: list[RecipientSummary] = Field(
        description="for a scoped token, only the recipients in its scope"
    )
    size: int


class MessageList(BaseModel):
    count: int = Field(description="messages on this page")
    messages: list[MessageSummary]
    next: str | None = Field(description="pass as ?cursor= for the next page; null: the last")


class HeadersPublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    subject: str | None
    from_: str | None = Field(alias="from")
    to: str | None
    date: str | None
    message_id: str | None


class AttachmentPublic(BaseModel):
    filename: str | None
    content_type: str
    size: int = Field(description="bytes, decoded")


class PreviewPublic(BaseModel):
    """A message made safe to look at: text only, nothing active, nothing fetched."""

    id: str
    headers: HeadersPublic
    text: str = Field(description="the first text part, or the first HTML part as text")
    source: str = Field(description="text/plain, text/html, or none")
    truncated: bool
    links: list[str] = Field(description="link addresses of the HTML, as text; not followed")
    attachments: list[AttachmentPublic] = Field(description="listed, never opened")
    too_deep: bool = Field(description="MIME nested too deep: the body was not read")


class ReleaseBody(BaseModel):
    recipients: list[Annotated[str, Field(max_length=320)]] | None = Field(
        None,
        max_length=100,
        description="the held recipients to release; none: every one the token may act for",
    )
    rescan: bool = Field(False, description="judge it again instead of delivering it as is")


class ActionResult(BaseModel):
    """What a release or a delete did."""

    id: str
    action: str = Field(description="released | rescanned | deleted")
    recipients: list[str] = Field(description="the recipients it was done for")
    status: MessageStatus = Field(description="the message's state afterwards")
    detail: str


BULK_LIMIT = 500


class BulkBody(BaseModel):
    ids: list[Annotated[str, Field(max_length=100)]] = Field(
        min_length=1, max_length=BULK_LIMIT, description=f"message ids, at most {BULK_LIMIT}"
    )


class BulkOutcome(BaseModel):
    id: str
    outcome: str = Field(description="released | deleted | not_found | conflict | forbidden")
    detail: str


class BulkResult(BaseModel):
    count: int
    results: list[BulkOutcome] = Field(description="one per id, in the order given")


class Health(BaseModel):
    status: str


def message_public(record: MessageRecord, caller: Principal) -> MessagePublic:
    verdict = None
    if record.verdict is not None:
        verdict = VerdictPublic(
            verdict=record.verdict, score=record.score or 0.0, findings=record.findings or []
        )
    shown = record.model_dump(exclude={"verdict", "score", "findings", "recipients"})
    return MessagePublic.model_validate(
        {
            **shown,
            "verdict": verdict,
            "from": record.header_from,
            "message_id": record.header_message_id,
            # A scoped token sees its own recipients only: not who else got it (a Bcc).
            "recipients": [r.model_dump() for r in record.recipients if caller.covers(r.address)],
        }
    )


def message_summary(record: MessageRecord, caller: Principal) -> MessageSummary:
    return MessageSummary(
        id=record.id,
        received_at=record.received_at,
        status=record.status,
        verdict=record.verdict,
        score=record.score,
        mail_from=record.mail_from,
        from_=record.header_from,
        subject=record.subject,
        recipients=[
            RecipientSummary(address=r.address, status=r.status)
            for r in record.recipients
            if caller.covers(r.address)
        ],
        size=record.size,
    )


def preview_public(message_id: str, shown: Preview) -> PreviewPublic:
    headers = shown.headers
    return PreviewPublic(
        id=message_id,
        headers=HeadersPublic(
            subject=headers.subject,
            from_=headers.from_,
            to=headers.to,
            date=headers.date,
            message_id=headers.message_id,
        ),
        text=shown.text,
        source=shown.source,
        truncated=shown.truncated,
        links=shown.links,
        attachments=[
            AttachmentPublic(filename=a.filename, content_type=a.content_type, size=a.size)
            for a in shown.attachments
        ],
        too_deep=shown.too_deep,
    )
