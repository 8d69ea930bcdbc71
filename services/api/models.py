"""What the API shows: public shapes of a message, separate from the database records."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator

from moat.model import Finding, MessageStatus, RecipientStatus
from moat.repository import MessageRecord


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
    id: str
    status: MessageStatus
    mail_from: str
    client_address: str
    helo: str
    size: int
    received_at: UtcDateTime
    updated_at: UtcDateTime
    verdict: VerdictPublic | None
    attempts: int
    next_attempt_at: UtcDateTime | None
    bounce_of: str | None
    reason: str | None
    recipients: list[RecipientPublic]
    events: list[EventPublic]


class Health(BaseModel):
    status: str


def message_public(record: MessageRecord) -> MessagePublic:
    verdict = None
    if record.verdict is not None:
        verdict = VerdictPublic(
            verdict=record.verdict, score=record.score or 0.0, findings=record.findings or []
        )
    return MessagePublic.model_validate(
        {**record.model_dump(exclude={"verdict", "score", "findings"}), "verdict": verdict}
    )
